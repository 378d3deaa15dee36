"""``ckpt_dedup`` with real torch: frozen tensors stored once, changed ones again, restart
from any kept checkpoint bit-exact, damage to a shared object never loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import candle_ckpt as candle  # noqa: E402
from candle_ckpt.storage.layout import Layout  # noqa: E402
from candle_ckpt.storage.objects import sizes  # noqa: E402
from tests.helpers.cli import run_cli  # noqa: E402


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A frozen 'encoder' (128 KiB of weights) and a trainable head with Adam."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(128, 256), nn.Tanh(), nn.Dropout(0.1), nn.Linear(256, 256))
    model[0].requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer


def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    x = torch.randn(32, 128)
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def engine(directory: Path, **extra: Any) -> candle.CandleCkptPyTorch:
    params = {"epochs": 10, "ckpt_directory": str(directory), "ckpt_dedup": True,
              "ckpt_keep_mode": "all", "ckpt_save_best": False, **extra}
    return candle.CandleCkptPyTorch(params, logger=None)


def train(directory: Path, epochs: int, **extra: Any) -> tuple[nn.Module, Any, list[dict]]:
    """Train ``epochs`` epochs from scratch, saving each; the state after each epoch."""
    model, optimizer = make()
    ckpt = engine(directory, **extra)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    states = []
    for epoch in range(epochs):
        metric = step(model, optimizer)
        ckpt.ckpt_epoch(epoch, metric)
        states.append(snapshot(model, optimizer))
    ckpt.close()
    return model, optimizer, states


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": {i: {k: v.clone() if isinstance(v, torch.Tensor) else v
                              for k, v in s.items()}
                          for i, s in optimizer.state_dict()["state"].items()}}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k])
                                                                   for k in a)
    return bool(a == b)


def info(directory: Path, epoch: int) -> dict[str, Any]:
    return json.loads((directory / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text())


def point_last(directory: Path, epoch: int) -> None:
    last = directory / "ckpts" / "last"
    last.unlink()
    os.symlink(f"epochs/{epoch:03d}", last)


def object_file(directory: Path, name: str) -> Path:
    return directory / "ckpts" / "objects" / name[:2] / name


def test_frozen_tensors_are_written_once_and_changed_ones_again(tmp_path):
    model, _, _ = train(tmp_path, 4)
    frozen = model[0].weight.detach().numpy().nbytes
    objects = [set(info(tmp_path, e)["objects"]) for e in (1, 2, 3, 4)]
    shared = set.intersection(*objects)
    assert len(shared) == 1  # the frozen weight (its bias is too small to be an object)
    (name,) = shared
    assert info(tmp_path, 1)["objects"][name]["size"] > frozen
    # The changed ones (the head's weight, Adam's two moments) differ every epoch.
    for a, b in zip(objects, objects[1:], strict=False):
        assert len(a - b) == 3 and len(b - a) == 3
    # The store holds the frozen weight once, plus each epoch's changing part.
    assert set(sizes(Layout.ours(tmp_path))) == set.union(*objects)
    assert len(set.union(*objects)) == 1 + 4 * 3


def test_an_object_already_stored_is_not_rewritten(tmp_path):
    train(tmp_path, 1)
    before = {n: os.stat(object_file(tmp_path, n)) for n in info(tmp_path, 1)["objects"]}
    model, optimizer = make()
    ckpt = engine(tmp_path)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    ckpt.restart(model)
    ckpt.ckpt_epoch(1, step(model, optimizer))
    ckpt.close()
    shared = set(before) & set(info(tmp_path, 2)["objects"])
    assert len(shared) == 1
    for name in shared:
        st = os.stat(object_file(tmp_path, name))
        assert (st.st_ino, st.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)


@pytest.mark.parametrize("checksum", [False, True])
def test_restart_from_any_kept_checkpoint_is_bit_exact(tmp_path, checksum):
    _, _, states = train(tmp_path / "run", 4, ckpt_checksum=checksum)
    _, _, straight = train(tmp_path / "straight", 6)
    for epoch in (1, 2, 3, 4):
        copy = tmp_path / f"from-{epoch}"
        shutil.copytree(tmp_path / "run", copy, symlinks=True)  # the tree moves whole
        point_last(copy, epoch)
        model, optimizer = make(seed=99)
        ckpt = engine(copy, ckpt_checksum=checksum, ckpt_restart_mode="required")
        ckpt.set_model({"model": model, "optimizer": optimizer})
        J = ckpt.restart(model)
        assert J["epoch"] == epoch and J["skipped"] == []
        assert same(snapshot(model, optimizer), states[epoch - 1])
        for e in range(epoch, 6):  # resumed, the run goes on as if never interrupted
            ckpt.ckpt_epoch(e, step(model, optimizer))
        ckpt.close()
        assert same(snapshot(model, optimizer), straight[-1])


def test_a_damaged_object_makes_its_checkpoints_damaged_and_restart_falls_back(tmp_path):
    _, _, states = train(tmp_path, 3, ckpt_checksum=True)
    own = set(info(tmp_path, 3)["objects"]) - set(info(tmp_path, 2)["objects"])
    path = object_file(tmp_path, sorted(own)[0])
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    model, optimizer = make(seed=5)
    ckpt = engine(tmp_path, ckpt_checksum=True)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    ckpt.close()
    assert J["epoch"] == 2 and [s["epoch"] for s in J["skipped"]] == [3]
    assert "object" in J["skipped"][0]["reason"]
    assert same(snapshot(model, optimizer), states[1])


@pytest.mark.parametrize("damage", ["missing", "truncated", "symlink"])
def test_an_object_missing_truncated_or_linked_is_never_loaded_without_checksums(
        tmp_path, damage):
    _, _, states = train(tmp_path, 2)
    own = set(info(tmp_path, 2)["objects"]) - set(info(tmp_path, 1)["objects"])
    path = object_file(tmp_path, sorted(own)[0])
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        os.truncate(path, path.stat().st_size - 1)
    else:
        real = tmp_path / "elsewhere"
        shutil.move(path, real)
        os.symlink(real, path)
    model, optimizer = make(seed=5)
    ckpt = engine(tmp_path)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    ckpt.close()
    assert J["epoch"] == 1 and [s["epoch"] for s in J["skipped"]] == [2]
    assert same(snapshot(model, optimizer), states[0])


def test_keep_policy_deletes_the_objects_only_deleted_checkpoints_held(tmp_path):
    train(tmp_path, 4, ckpt_keep_mode="linear", ckpt_keep_limit=2)
    layout = Layout.ours(tmp_path)
    assert layout.complete_epochs() == [3, 4]
    kept = set(info(tmp_path, 3)["objects"]) | set(info(tmp_path, 4)["objects"])
    assert set(sizes(layout)) == kept  # epochs 1 and 2's own objects are gone
    model, optimizer = make(seed=3)
    ckpt = engine(tmp_path, ckpt_checksum=True)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    assert ckpt.restart(model)["epoch"] == 4
    ckpt.close()


def test_identical_tensors_in_one_checkpoint_share_one_object(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ckpt = engine(tmp_path)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    ckpt.ckpt_epoch(0, 1.0)
    ckpt.close()
    assert len(info(tmp_path, 1)["objects"]) == 1
    fresh = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
    ckpt = engine(tmp_path)
    ckpt.set_model({"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), lr=0.0)})
    ckpt.restart(fresh)
    ckpt.close()
    assert same(fresh.state_dict(), model.state_dict())


def test_a_dedup_checkpoint_refuses_another_model_and_changes_nothing(tmp_path):
    train(tmp_path, 1)
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(128, 256), nn.Tanh(), nn.Dropout(0.1), nn.Linear(256, 8))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    ckpt = engine(tmp_path)
    ckpt.set_model({"model": other, "optimizer": torch.optim.Adam(other.parameters())})
    with pytest.raises(candle.CheckpointMismatchError):
        ckpt.restart(other)
    ckpt.close()
    assert same(other.state_dict(), before)


@pytest.mark.parametrize("dedup", [True, False])
def test_load_state_and_export_give_what_a_plain_model_pt_holds(tmp_path, dedup):
    model, optimizer, states = train(tmp_path, 3, ckpt_dedup=dedup)
    state = candle.load_state(tmp_path, 2)
    assert state["epoch"] == 2 and state["format_version"] == 1
    assert "object_refs" not in state
    assert same(dict(state["model_state_dict"]), states[1]["model"])
    out = tmp_path / "epoch2.pt"
    proc = run_cli("export", tmp_path, "2", out)
    assert proc.returncode == 0, proc.stderr
    plain = torch.load(out, weights_only=True)  # no candle-ckpt needed to read it
    fresh, fresh_optimizer = make(seed=4)
    fresh.load_state_dict(plain["model_state_dict"])
    fresh_optimizer.load_state_dict(plain["optimizer_state_dict"])
    assert same(snapshot(fresh, fresh_optimizer), states[1])
    # The directory of one checkpoint names it too; OUT is never overwritten.
    epoch_dir = tmp_path / "ckpts" / "epochs" / "003"
    assert same(dict(candle.load_state(epoch_dir)["model_state_dict"]), states[2]["model"])
    again = run_cli("export", tmp_path, "last", out)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_load_state_refuses_a_checkpoint_whose_object_is_damaged(tmp_path):
    train(tmp_path, 2)
    own = sorted(set(info(tmp_path, 2)["objects"]) - set(info(tmp_path, 1)["objects"]))
    path = object_file(tmp_path, own[0])
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(candle.CheckpointCorruptError, match="object"):
        candle.load_state(tmp_path)
    proc = run_cli("export", tmp_path, "2", tmp_path / "out.pt")
    assert proc.returncode == 2 and "fails verification" in proc.stderr
    assert not (tmp_path / "out.pt").exists()
    assert candle.load_state(tmp_path, 1)["epoch"] == 1


def test_a_model_with_no_tensor_large_enough_for_an_object_restarts(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    ckpt = engine(tmp_path)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    step_ = model(torch.randn(3, 4)).sum()
    step_.backward()
    optimizer.step()
    ckpt.ckpt_epoch(0, 1.0)
    ckpt.close()
    assert info(tmp_path, 1)["objects"] == {}
    fresh = nn.Linear(4, 2)
    ckpt = engine(tmp_path, ckpt_restart_mode="required")
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    ckpt.set_model({"model": fresh, "optimizer": fresh_optimizer})
    assert ckpt.restart(fresh)["skipped"] == []
    ckpt.close()
    assert same(fresh.state_dict(), model.state_dict())
    assert same(candle.load_state(tmp_path)["model_state_dict"], model.state_dict())
