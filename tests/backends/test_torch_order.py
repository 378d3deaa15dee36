"""``CandleCkptPyTorch.batches``: a loop stopped mid-epoch by a real SIGUSR1 resumes the
interrupted epoch in the interrupted run's order, skipping the done batches without
fetching them, with every RNG where it was; the record is checked like every other."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from torch import nn  # noqa: E402
from torch.utils.data import (  # noqa: E402
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    WeightedRandomSampler,
)

import candle_ckpt as candle  # noqa: E402
from tests.helpers.torch_state import assert_identical  # noqa: E402

N, BATCH, EPOCHS = 24, 4, 3  # 6 batches per epoch
STOP = (1, 2)  # SIGUSR1 after batch index 2 of epoch 1: 3 batches of it are done


class Indexed(Dataset[Any]):
    """Sample ``i`` is ``(x[i], y[i], i)``; every fetch is counted (across workers too).
    With ``noisy``, a fetch draws from torch's global RNG (an augmentation)."""

    def __init__(self, noisy: bool = False) -> None:
        g = torch.Generator().manual_seed(42)
        self.x, self.y = torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g)
        self.fetched = multiprocessing.get_context("fork").Value("i", 0)
        self.noisy = noisy

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        with self.fetched.get_lock():
            self.fetched.value += 1
        x = self.x[i] + 0.01 * torch.randn(4) if self.noisy else self.x[i]
        return x, self.y[i], i


class Shuffled(IterableDataset[Any]):
    """An iterable dataset whose order is drawn from torch's RNG as iteration begins."""

    def __init__(self) -> None:
        self.inner = Indexed()
        self.fetched = self.inner.fetched

    def __iter__(self) -> Iterator[Any]:
        for i in torch.randperm(N).tolist():
            yield self.inner[i]


def stateful_loader(dataset: Any, **kw: Any) -> Any:
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    return sdl.StatefulDataLoader(dataset, batch_size=BATCH, shuffle=True, **kw)


LOADERS: dict[str, Callable[[], DataLoader[Any]]] = {
    "shuffle": lambda: DataLoader(Indexed(noisy=True), batch_size=BATCH, shuffle=True),
    "shuffle-own-generator": lambda: DataLoader(
        Indexed(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(3)),
    "sequential": lambda: DataLoader(Indexed(noisy=True), batch_size=BATCH),
    "weighted": lambda: DataLoader(Indexed(), batch_size=BATCH, sampler=WeightedRandomSampler(
        torch.linspace(1, 2, N), N)),
    "batch-sampler": lambda: DataLoader(Indexed(), batch_sampler=BatchSampler(
        SequentialSampler(range(N)), BATCH, drop_last=False)),
    "no-batching": lambda: DataLoader(Indexed(), batch_size=None, shuffle=True),
    "distributed": lambda: DataLoader(Indexed(), batch_size=BATCH // 2, sampler=DistributedSampler(
        Indexed(), num_replicas=2, rank=1, seed=9)),
    "workers": lambda: DataLoader(Indexed(), batch_size=BATCH, shuffle=True, num_workers=2),
    "persistent-workers": lambda: DataLoader(Indexed(), batch_size=BATCH, shuffle=True,
                                             num_workers=2, persistent_workers=True),
    "iterable": lambda: DataLoader(Shuffled(), batch_size=BATCH),
    "stateful": lambda: stateful_loader(Indexed()),
}


@dataclass
class Run:
    order: list[list[int]]  # the sample indices trained, by epoch
    state: dict[str, Any]  # weights, optimizer, RNG at the end
    fetched: int  # samples the dataset was asked for
    trained: int  # batches trained
    log: str


def ids_of(batch: Any) -> list[int]:
    ids = batch[2]
    return [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else [ids])]


def run(directory: Path, make: Callable[[], Any], stop_at: tuple[int, int] | None = None,
        use_batches: bool = True, in_set_model: bool = False) -> Run:
    """One process's training: from scratch or resumed; SIGUSR1 to itself at ``stop_at``."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    loader = make()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = candle.CandleCkptPyTorch({"epochs": EPOCHS, "ckpt_directory": str(directory),
                                     "ckpt_signals": "SIGUSR1"}, logger=None)
    objects = {"model": model, "optimizer": optimizer}
    if in_set_model:
        objects["loader"] = loader
    ckpt.set_model(objects)
    J = ckpt.restart(model)
    start = J["epoch"] if J is not None else 0
    order: list[list[int]] = [[] for _ in range(EPOCHS)]
    trained = 0
    for epoch in range(start, EPOCHS):
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            loader.sampler.set_epoch(epoch)
        batches: Any = ckpt.batches(loader, epoch) if use_batches else loader
        first = batches.start if use_batches else 0
        for i, batch in enumerate(batches, start=first):
            x, y, _ = batch
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x.reshape(-1, 4)), y.reshape(-1, 1)).backward()
            optimizer.step()
            order[epoch] += ids_of(batch)
            trained += 1
            if (epoch, i) == stop_at:
                os.kill(os.getpid(), signal.SIGUSR1)
            if ckpt.ckpt_batch(epoch, i):
                break
        if ckpt.stop_requested:
            break
        ckpt.ckpt_epoch(epoch, 0.0)
    ckpt.on_train_end()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "python": random.getstate()}
    dataset = loader.dataset
    return Run(order, state, dataset.fetched.value, trained,
               (directory / "ckpt.log").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """The uninterrupted run of each loader, once."""
    runs: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in runs:
            runs[name] = run(tmp_path_factory.mktemp(name), LOADERS[name])
        return runs[name]
    return get


def stop_and_resume(tmp_path: Path, make: Callable[[], Any], **kw: Any) -> tuple[Run, Run]:
    stopped = run(tmp_path, make, stop_at=STOP, **kw)
    assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/001+000003"
    return stopped, run(tmp_path, make, **kw)


# ------------------------------------------------------------------------------ exact
@pytest.mark.parametrize("name", list(LOADERS))
def test_a_stopped_epoch_resumes_in_the_interrupted_runs_order_bit_identically(
        tmp_path: Path, straight: Callable[[str], Run], name: str) -> None:
    reference = straight(name)
    stopped, resumed = stop_and_resume(tmp_path, LOADERS[name])
    done = STOP[1] + 1
    # The interrupted epoch: the first run trained its first batches, the resumed run
    # the rest, in the uninterrupted run's order; no batch twice, none left out.
    assert stopped.order[1] + resumed.order[1] == reference.order[1]
    assert resumed.order[2] == reference.order[2]
    assert stopped.trained + resumed.trained == reference.trained
    assert f"epoch 2 resumed after batch {done}" in resumed.log
    assert_identical(reference.state, resumed.state)  # weights, Adam, every RNG
    trained_samples = len(resumed.order[1]) + len(resumed.order[2])
    # The done batches' samples are fetched again only from an IterableDataset.
    skipped = len(stopped.order[1]) if name == "iterable" else 0
    assert resumed.fetched == trained_samples + skipped


def test_a_second_stop_in_the_resumed_epoch_resumes_exactly_too(
        tmp_path: Path, straight: Callable[[str], Run]) -> None:
    reference = straight("shuffle")
    first = run(tmp_path, LOADERS["shuffle"], stop_at=STOP)
    second = run(tmp_path, LOADERS["shuffle"], stop_at=(1, 4))
    assert os.readlink(tmp_path / "ckpts" / "last") == "epochs/001+000005"
    third = run(tmp_path, LOADERS["shuffle"])
    assert first.order[1] + second.order[1] + third.order[1] == reference.order[1]
    assert first.trained + second.trained + third.trained == reference.trained
    assert_identical(reference.state, third.state)


def test_the_skipped_samples_are_never_fetched(tmp_path: Path,
                                               straight: Callable[[str], Run]) -> None:
    reference = straight("shuffle")
    stopped, resumed = stop_and_resume(tmp_path, LOADERS["shuffle"])
    assert resumed.fetched == len(resumed.order[1]) + len(resumed.order[2])
    assert reference.fetched == N * EPOCHS
    assert len(stopped.order[1]) == (STOP[1] + 1) * BATCH


def test_with_workers_only_the_batches_left_are_sent_to_them(
        tmp_path: Path, straight: Callable[[str], Run]) -> None:
    _, resumed = stop_and_resume(tmp_path, LOADERS["workers"])
    # Workers prefetch (2 per worker) past the end of nothing: every fetch is trained.
    assert resumed.fetched == len(resumed.order[1]) + len(resumed.order[2])


def test_a_stateful_dataloader_in_set_model_resumes_through_its_state_dict(
        tmp_path: Path, straight: Callable[[str], Run]) -> None:
    reference = straight("stateful")
    stopped = run(tmp_path, LOADERS["stateful"], stop_at=STOP, in_set_model=True)
    payload = torch.load(tmp_path / "ckpts" / "epochs" / "001+000003" / "model.pt",
                         weights_only=True)
    assert payload["entries"]["loader"]["_num_yielded"] == STOP[1] + 1
    assert payload["epoch_order"]["state"]["_num_yielded"] == STOP[1] + 1
    resumed = run(tmp_path, LOADERS["stateful"], in_set_model=True)
    assert stopped.order[1] + resumed.order[1] == reference.order[1]
    assert_identical(reference.state, resumed.state)


def test_a_loop_that_does_not_iterate_batches_records_no_order_and_is_skipped_with_a_warning(
        tmp_path: Path, straight: Callable[[str], Run]) -> None:
    reference = straight("sequential")
    stopped = run(tmp_path, LOADERS["sequential"], stop_at=STOP, use_batches=False)
    payload = torch.load(tmp_path / "ckpts" / "epochs" / "001+000003" / "model.pt",
                         weights_only=True)
    assert "epoch_order" not in payload
    resumed = run(tmp_path, LOADERS["sequential"])
    assert stopped.order[1] + resumed.order[1] == reference.order[1]
    assert "holds no record of epoch 2's order" in resumed.log
    # A sequential order needs no record; the RNG states were left as restored.
    assert_identical(reference.state, resumed.state)


def test_a_stateful_dataloader_in_set_model_stopped_without_batches_resumes_from_its_state(
        tmp_path: Path, straight: Callable[[str], Run]) -> None:
    reference = straight("stateful")
    stopped = run(tmp_path, LOADERS["stateful"], stop_at=STOP, use_batches=False,
                  in_set_model=True)
    resumed = run(tmp_path, LOADERS["stateful"], in_set_model=True)
    assert stopped.order[1] + resumed.order[1] == reference.order[1]  # not skipped twice
    assert "resumed from the StatefulDataLoader's own state" in resumed.log
    assert_identical(reference.state, resumed.state)


# ------------------------------------------------------------------------------ the record
def rewrite_order(directory: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Replace the epoch_order of ``directory``'s model.pt (its manifest follows)."""
    path = directory / "model.pt"
    payload = torch.load(path, weights_only=True)
    payload["epoch_order"] = change(payload["epoch_order"])
    torch.save(payload, path)
    info_path = directory / "ckpt-info.json"
    info = json.loads(info_path.read_text())
    info["files"]["model.pt"]["size"] = path.stat().st_size
    info_path.write_text(json.dumps(info))


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(order: dict[str, Any]) -> dict[str, Any]:
        return {**order, key: value}
    return change


BAD_RECORDS = {
    "not-a-dict": (lambda order: "order", "is a str, expected a dict"),
    "kind": (set_key("kind", "tfdata"), "kind 'tfdata' is not one of"),
    "position": (set_key("position", -1), "position -1 is not a non-negative integer"),
    "epoch": (set_key("epoch", 0), "contradicts the checkpoint"),
    "generators": (set_key("generators", {"loader": torch.zeros(3)}),
                   "generators is not a dict of torch.Generator states"),
    "start": (set_key("start", {"torch": torch.zeros(5, dtype=torch.uint8)}),
              "not a torch CPU generator state"),
    "distributed": (set_key("distributed", [1, 2]), "is not [seed, rank, num_replicas]"),
}


@pytest.mark.parametrize("bad", list(BAD_RECORDS))
def test_a_damaged_record_makes_restart_fall_back_to_the_checkpoint_before(
        tmp_path: Path, bad: str) -> None:
    change, message = BAD_RECORDS[bad]
    run(tmp_path, LOADERS["shuffle"], stop_at=STOP)
    rewrite_order(tmp_path / "ckpts" / "epochs" / "001+000003", change)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
    ckpt = candle.CandleCkptPyTorch({"epochs": EPOCHS, "ckpt_directory": str(tmp_path)},
                                    logger=None)
    ckpt.set_model({"model": model, "optimizer": torch.optim.Adam(model.parameters())})
    J = ckpt.restart(model)
    ckpt.close()
    assert J is not None and (J["epoch"], J["batch"]) == (1, 0)  # epoch 1's end
    (skipped,) = J["skipped"]
    assert skipped["batch"] == 3 and message in skipped["reason"]


def resume_with(directory: Path, loader: Any) -> Any:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
    ckpt = candle.CandleCkptPyTorch({"epochs": EPOCHS, "ckpt_directory": str(directory)},
                                    logger=None)
    ckpt.set_model({"model": model, "optimizer": torch.optim.Adam(model.parameters())})
    ckpt.restart(model)
    return ckpt


@pytest.mark.parametrize(("other", "message"), [
    ("iterable", "recorded from a DataLoader over a map-style dataset; this loader is a "
                 "DataLoader over an IterableDataset"),
    ("sequential", "drawn by sampler torch.utils.data.sampler.RandomSampler"),
    ("half-batches", "had 6 batches per epoch, this one has 12"),
    ("shuffle-own-generator", "drew from generators none of its own, this one from ['loader']"),
])
def test_resuming_with_another_kind_of_loader_is_refused_naming_both(
        tmp_path: Path, other: str, message: str) -> None:
    run(tmp_path, LOADERS["shuffle"], stop_at=STOP)
    loader = (DataLoader(Indexed(), batch_size=BATCH // 2, shuffle=True)
              if other == "half-batches" else LOADERS[other]())
    ckpt = resume_with(tmp_path, loader)
    with pytest.raises(candle.CheckpointMismatchError, match="batches: ") as err:
        ckpt.batches(loader, 1)
    assert message in str(err.value)
    # Nothing was consumed: the loader the interrupted run had still resumes.
    assert ckpt.batches(LOADERS["shuffle"](), 1).start == STOP[1] + 1
    ckpt.close()


def test_a_distributed_sampler_with_another_seed_is_refused(tmp_path: Path) -> None:
    run(tmp_path, LOADERS["distributed"], stop_at=STOP)
    dataset = Indexed()
    loader = DataLoader(dataset, batch_size=BATCH // 2,
                        sampler=DistributedSampler(dataset, num_replicas=2, rank=1, seed=10))
    ckpt = resume_with(tmp_path, loader)
    with pytest.raises(candle.CheckpointMismatchError,
                       match=r"DistributedSampler had \(seed, rank, num_replicas\) "
                             r"\(9, 1, 2\), this loader's has \(10, 1, 2\)"):
        ckpt.batches(loader, 1)
    ckpt.close()


def test_batches_refuses_what_is_not_a_dataloader_and_a_bad_epoch(tmp_path: Path) -> None:
    ckpt = candle.CandleCkptPyTorch({"epochs": EPOCHS, "ckpt_directory": str(tmp_path)},
                                    logger=None)
    with pytest.raises(candle.CkptParamTypeError, match="must be a torch.utils.data.DataLoader"
                                                        ".*got list"):
        ckpt.batches([1, 2, 3], 0)
    with pytest.raises(candle.CkptParamError, match="epoch"):
        ckpt.batches(LOADERS["sequential"](), -1)
    ckpt.close()


def test_an_epoch_beyond_the_interrupted_one_drops_the_resume_and_says_so(
        tmp_path: Path) -> None:
    run(tmp_path, LOADERS["shuffle"], stop_at=STOP)
    loader = LOADERS["shuffle"]()
    ckpt = resume_with(tmp_path, loader)
    batches = ckpt.batches(loader, 2)
    assert batches.start == 0 and len(batches) == N // BATCH
    ckpt.close()
    assert "the rest of that epoch is not trained" in (tmp_path / "ckpt.log").read_text()
