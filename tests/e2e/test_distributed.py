"""torch.distributed on CPU (gloo), world size 2, launched as torchrun launches workers:
one checkpoint for all ranks, one restart for all, bit-identical resume after kills."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import candle_ckpt as candle  # noqa: E402
from candle_ckpt.coordination import reduce_metric  # noqa: E402
from tests.helpers.process import free_port  # noqa: E402
from tests.helpers.torch_state import assert_identical  # noqa: E402

TRAINER = Path(__file__).with_name("ddp_trainer.py")
SRC = Path(__file__).resolve().parents[2] / "src"
EPOCHS = 4
KILL_AFTER = 2
EXIT_CODE, FAIL_CODE = 17, 3  # ddp_trainer.py's
WORLD = 2


@dataclass
class Rank:
    returncode: int
    stdout: str
    stderr: str

    def errors(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.stdout.splitlines() if ln.startswith("{")]


def launch(ckpt_dir: Path, out: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 90.0, world: int = WORLD) -> list[Rank]:
    """Run every rank of one job to its end (a hung rank fails the test at ``timeout``)."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world), "PYTHONPATH": f"{SRC}{os.pathsep}"
            f"{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    procs = [subprocess.Popen(
        [sys.executable, str(TRAINER), "--ckpt-dir", str(ckpt_dir), "--epochs", str(EPOCHS),
         "--out", str(out), *args],
        env={**base, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for rank in range(world)]
    ranks = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            ranks.append(Rank(p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return ranks


def finished(ranks: list[Rank]) -> None:
    for rank, r in enumerate(ranks):
        assert r.returncode == 0, f"rank {rank} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"


def final_state(out: Path, rank: int) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(f"{out}.rank{rank}", weights_only=False)
    return state


def initial_epochs(ranks: list[Rank]) -> list[int]:
    return [int(ln.split("initial_epoch=")[1]) for r in ranks for ln in r.stdout.splitlines()
            if "initial_epoch=" in ln]


def last_epoch(ckpt_dir: Path) -> int:
    return int(os.readlink(ckpt_dir / "ckpts" / "last").rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Rank]]:
    """EPOCHS epochs without interruption: the reference every resumed run must match."""
    root = tmp_path_factory.mktemp("straight")
    ranks = launch(root / "ckpt", root / "out")
    finished(ranks)
    return root / "ckpt", root / "out", ranks


def assert_matches_straight(straight: tuple[Path, Path, list[Rank]], out: Path) -> None:
    _, reference, _ = straight
    for rank in range(WORLD):
        assert_identical(final_state(reference, rank), final_state(out, rank), f"rank {rank}")


# ------------------------------------------------------------------------------ the tree
def test_one_model_file_and_one_rng_file_per_rank(
        straight: tuple[Path, Path, list[Rank]]) -> None:
    ckpt_dir, out, ranks = straight
    epochs = ckpt_dir / "ckpts" / "epochs"
    assert sorted(p.name for p in epochs.iterdir()) == ["001", "002", "003", "004"]
    for directory in epochs.iterdir():
        assert sorted(p.name for p in directory.iterdir()) == [
            "ckpt-info.json", "model.pt", "rng-rank-00000.pt", "rng-rank-00001.pt"]
        info = json.loads((directory / "ckpt-info.json").read_text())
        assert sorted(info["files"]) == ["model.pt", "rng-rank-00000.pt", "rng-rank-00001.pt"]
        assert all("checksum" in f for f in info["files"].values())
        assert info["world_size"] == WORLD
    assert not (ckpt_dir / "ckpts" / "work").exists()
    # The ranks hold the same parameters (DDP) but different RNG states (seeded apart).
    a, b = final_state(out, 0), final_state(out, 1)
    assert_identical(a["model"], b["model"])
    assert not torch.equal(a["torch_rng"], b["torch_rng"])


def test_rank_0_logs_each_save_once_with_every_ranks_bytes(
        straight: tuple[Path, Path, list[Rank]]) -> None:
    """The original's "model wrote:" and "checksummed:" lines: one per save, all files."""
    ckpt_dir, _, _ = straight
    log = (ckpt_dir / "ckpt.log").read_text().splitlines()
    sizes = []
    for epoch in range(1, EPOCHS + 1):
        info = json.loads((ckpt_dir / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                          .read_text())
        sizes.append("%0.3f MB" % (sum(f["size"] for f in info["files"].values()) / 2**20))
    for line in ("model wrote: ", "checksummed: "):
        assert [ln.split(line)[1].split(" in ")[0] for ln in log if line in ln] == sizes


def test_save_decision_uses_the_mean_of_the_ranks_metrics(
        straight: tuple[Path, Path, list[Rank]]) -> None:
    ckpt_dir, _, ranks = straight
    losses = [[float(ln.split("loss=")[1]) for ln in r.stdout.splitlines() if "loss=" in ln]
              for r in ranks]
    assert losses[0] != losses[1]  # each rank saw other batches: the reduction matters
    for epoch in range(1, EPOCHS + 1):
        info = json.loads((ckpt_dir / "ckpts" / "epochs" / f"{epoch:03d}"
                           / "ckpt-info.json").read_text())
        assert info["metric_value"] == (losses[0][epoch - 1] + losses[1][epoch - 1]) / 2


def test_reduce_metric_mean_rank0_and_missing() -> None:
    assert reduce_metric([1.0, 3.0], "mean") == 2.0
    assert reduce_metric([1.0, 3.0], "rank0") == 1.0
    assert reduce_metric([1.0, None], "mean") is None  # no best judged on part of the ranks
    with pytest.raises(candle.CkptParamError, match="'ckpt_distributed_metric'.*median"):
        reduce_metric([1.0], "median")


# ------------------------------------------------------------------------------ kills
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_both_ranks_after_epoch_k_then_restart_is_bit_identical(
        straight: tuple[Path, Path, list[Rank]], tmp_path: Path, mode: str) -> None:
    args = ("--async",) if mode == "async" else ()
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    killed = launch(ckpt_dir, out, *args, env={"DDP_EXIT_AFTER": str(KILL_AFTER)})
    assert [r.returncode for r in killed] == [EXIT_CODE] * WORLD
    assert last_epoch(ckpt_dir) == KILL_AFTER
    resumed = launch(ckpt_dir, out, *args)
    finished(resumed)
    assert initial_epochs(resumed) == [KILL_AFTER] * WORLD
    assert_matches_straight(straight, out)


def test_one_rank_killed_inside_a_save_then_both_restart_bit_identical(
        straight: tuple[Path, Path, list[Rank]], tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    dying = KILL_AFTER + 1
    killed = launch(ckpt_dir, out, env={"DDP_EXIT_RANK": "1", "DDP_DIE_IN_SAVE": str(dying)})
    # The fault landed inside the save: rank 1 wrote its files and died before the ranks
    # agreed; rank 0 noticed, did not commit, and reported it.
    assert killed[1].returncode == EXIT_CODE and f"dying in save {dying}" in killed[1].stdout
    assert killed[0].returncode == FAIL_CODE
    (error,) = killed[0].errors()
    assert error["error"] == "CheckpointWriteError" and "lost contact" in error["message"]
    assert last_epoch(ckpt_dir) == KILL_AFTER
    assert not (ckpt_dir / "ckpts" / "epochs" / f"{dying:03d}").exists()
    resumed = launch(ckpt_dir, out)
    finished(resumed)
    assert initial_epochs(resumed) == [KILL_AFTER] * WORLD
    assert_matches_straight(straight, out)


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_batch_and_resumes_exactly(
        straight: tuple[Path, Path, list[Rank]], tmp_path: Path) -> None:
    # Async: epoch 1's save is in flight on the writer thread while the ranks agree on
    # stopping at epoch 2's first batches (two threads, two process groups); the
    # stop-save itself is synchronous.
    args = ("--batch-ckpt", "--async")
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    stopped = launch(ckpt_dir, out, *args, env={"DDP_EXIT_RANK": "1", "DDP_SIGNAL_AT": "1:1"})
    # Only rank 1 got SIGUSR1; both saved the same mid-epoch checkpoint and stopped.
    assert [r.returncode for r in stopped] == [EXIT_CODE] * WORLD
    for rank, r in enumerate(stopped):
        assert f"rank {rank} stopped at epoch 1 batch 1" in r.stdout
    assert os.readlink(ckpt_dir / "ckpts" / "last") == "epochs/001+000002"
    info = json.loads((ckpt_dir / "ckpts" / "last" / "ckpt-info.json").read_text())
    assert info["batch"] == 2 and "rng-rank-00001.pt" in info["files"]
    resumed = launch(ckpt_dir, out, *args)
    finished(resumed)
    assert initial_epochs(resumed) == [1] * WORLD
    assert_matches_straight(straight, out)  # ckpt_batch draws nothing: the same run


def test_a_damaged_rank_file_makes_every_rank_fall_back_to_the_same_older_checkpoint(
        straight: tuple[Path, Path, list[Rank]], tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    shutil.copytree(straight[0], ckpt_dir, symlinks=True)
    damaged = ckpt_dir / "ckpts" / "epochs" / f"{EPOCHS:03d}" / "rng-rank-00001.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum tells
    damaged.write_bytes(bytes(data))
    resumed = launch(ckpt_dir, out)
    finished(resumed)
    assert initial_epochs(resumed) == [EPOCHS - 1] * WORLD  # both fell back, to the same
    log = (ckpt_dir / "ckpt.log").read_text()
    assert f"skipping {damaged.parent}" in log and "rng-rank-00001.pt" in log
    assert log.count(f"restarting from epoch: {EPOCHS - 1}") == 1  # rank 0's log, once
    assert_matches_straight(straight, out)  # epoch 4 re-done exactly


# ------------------------------------------------------------------------------ failures
@pytest.mark.parametrize(("fault", "failing_rank"), [("WRITE", 1), ("CAPTURE", 0)])
def test_a_failing_save_on_one_rank_raises_the_same_error_on_every_rank(
        tmp_path: Path, fault: str, failing_rank: int) -> None:
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    failing = KILL_AFTER + 1
    ranks = launch(ckpt_dir, out, env={"DDP_EXIT_RANK": str(failing_rank),
                                       f"DDP_FAIL_{fault}": str(failing)})
    assert [r.returncode for r in ranks] == [FAIL_CODE] * WORLD
    errors = [r.errors() for r in ranks]
    assert all(len(e) == 1 for e in errors), errors
    first, second = errors[0][0], errors[1][0]
    assert first["error"] == second["error"] == "CheckpointWriteError"
    assert first["message"] == second["message"] and first["errno"] == second["errno"]
    assert first["errno"] == (28 if fault == "WRITE" else 0)  # ENOSPC travels to every rank
    assert f"saving epoch {failing} failed on rank {failing_rank}" in first["message"]
    assert "(injected)" in first["message"] and "'last' are untouched" in first["message"]
    assert last_epoch(ckpt_dir) == KILL_AFTER
    assert not (ckpt_dir / "ckpts" / "epochs" / f"{failing:03d}").exists()
    assert not (ckpt_dir / "ckpts" / "work").exists()
    assert "failed on rank" in (ckpt_dir / "ckpt.log").read_text()


def test_restart_with_another_world_size_is_refused_naming_both(
        straight: tuple[Path, Path, list[Rank]], tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(straight[0], ckpt_dir, symlinks=True)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(12, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = candle.CandleCkptPyTorch({"epochs": EPOCHS, "ckpt_directory": str(ckpt_dir)},
                                    logger=None)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    with pytest.raises(candle.CheckpointMismatchError,
                       match=r"saved by 2 rank\(s\).*this run has 1.*restart with 2"):
        ckpt.restart(model)
    ckpt.close()
    assert_identical(before, model.state_dict())  # nothing was loaded


# ------------------------------------------------------------------------------ sharded
@pytest.fixture(scope="module")
def straight_fsdp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Rank]]:
    """FSDP2 (fully_shard) on CPU with gloo, EPOCHS epochs without interruption."""
    root = tmp_path_factory.mktemp("straight-fsdp")
    ranks = launch(root / "ckpt", root / "out", "--fsdp")
    finished(ranks)
    return root / "ckpt", root / "out", ranks


def test_sharded_state_is_written_with_dcp_one_shard_file_per_rank(
        straight_fsdp: tuple[Path, Path, list[Rank]]) -> None:
    ckpt_dir, _, _ = straight_fsdp
    directory = ckpt_dir / "ckpts" / "epochs" / f"{EPOCHS:03d}"
    info = json.loads((directory / "ckpt-info.json").read_text())
    assert info["sharded"] == "dcp" and info["world_size"] == WORLD
    assert sorted(info["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                     "model.pt", "rng-rank-00000.pt", "rng-rank-00001.pt"]
    payload = torch.load(directory / "model.pt", weights_only=True)
    # No rank gathered the model: model.pt holds the scheduler and RNGs, no weights.
    assert payload["model_state_dict"] is None and payload["optimizer_state_dict"] is None
    assert "scheduler" in payload["entries"]


def test_sharded_kill_both_ranks_after_epoch_k_then_restart_is_bit_identical(
        straight_fsdp: tuple[Path, Path, list[Rank]], tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    killed = launch(ckpt_dir, out, "--fsdp", env={"DDP_EXIT_AFTER": str(KILL_AFTER)})
    assert [r.returncode for r in killed] == [EXIT_CODE] * WORLD
    resumed = launch(ckpt_dir, out, "--fsdp")
    finished(resumed)
    assert initial_epochs(resumed) == [KILL_AFTER] * WORLD
    assert_matches_straight(straight_fsdp, out)


def test_sharded_restart_with_another_world_size_reshards_and_says_rng_is_not_restored(
        straight_fsdp: tuple[Path, Path, list[Rank]], tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    shutil.copytree(straight_fsdp[0], ckpt_dir, symlinks=True)
    (single,) = launch(ckpt_dir, out, "--fsdp", world=1)  # every epoch done: restore only
    finished([single])
    assert initial_epochs([single]) == [EPOCHS]
    expected, got = final_state(straight_fsdp[1], 0), final_state(out, 0)
    assert_identical(expected["model"], got["model"])
    assert_identical(expected["optimizer"], got["optimizer"])
    log = (ckpt_dir / "ckpt.log").read_text()
    assert "saved by 2 rank(s), this run has 1: the sharded state was resharded" in log


# ------------------------------------------------------------------------------ ckpt_dedup
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dedup_the_writer_stores_the_frozen_layer_once_and_a_killed_run_resumes_exactly(
        tmp_path: Path, mode: str) -> None:
    args = ("--dedup", "--async") if mode == "async" else ("--dedup",)
    reference = tmp_path / "straight-out"
    finished(launch(tmp_path / "straight", reference, *args))
    refs = [set(json.loads((tmp_path / "straight" / "ckpts" / "epochs" / f"{e:03d}"
                            / "ckpt-info.json").read_text())["objects"])
            for e in range(1, EPOCHS + 1)]
    assert len(set.intersection(*refs)) == 1  # the frozen layer's weight, written once
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "out"
    killed = launch(ckpt_dir, out, *args, env={"DDP_EXIT_AFTER": str(KILL_AFTER)})
    assert [r.returncode for r in killed] == [EXIT_CODE] * WORLD
    resumed = launch(ckpt_dir, out, *args)
    finished(resumed)
    assert initial_epochs(resumed) == [KILL_AFTER] * WORLD
    for rank in range(WORLD):
        assert_identical(final_state(reference, rank), final_state(out, rank), f"rank {rank}")
