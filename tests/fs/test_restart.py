"""Restart: modes, layouts, rollback, validation and fallback, keep scope."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest

from candle_ckpt import (
    CandleCkpt,
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptError,
    CkptParamError,
)
from candle_ckpt.policy import epochs_to_keep
from candle_ckpt.testing import CandleCkptFiles, FilesBackend
from tests.helpers.fs import blobs, ckpts, engine, epoch_dirs, info, link_target, make_params, train


def three_epochs(directory: Path, **overrides) -> None:
    with engine(directory, **overrides) as e:
        train(e, [1, 2, 3], metrics={1: 0.9, 2: 0.5, 3: 0.7})


def flatten(directory: Path) -> None:
    """Turn our layout into the newer original's: epochs/, last, best in the root."""
    for name in ("epochs", "last", "best"):
        os.rename(ckpts(directory) / name, directory / name)
    os.rmdir(ckpts(directory))


def log_text(directory: Path) -> str:
    return (directory / "ckpt.log").read_text(encoding="utf-8")


# ------------------------------------------------------------------ modes and layouts

@pytest.mark.parametrize("layout", ["ours", "flat"])
@pytest.mark.parametrize("mode", ["auto", "required"])
def test_restart_loads_the_checkpoint_last_points_to(tmp_path, layout, mode):
    three_epochs(tmp_path)
    if layout == "flat":
        flatten(tmp_path)
    with engine(tmp_path, ckpt_restart_mode=mode) as e:
        J = e.restart()
        assert J is not None
        assert J["epoch"] == 3
        assert J["skipped"] == []
        base = ckpts(tmp_path) if layout == "ours" else tmp_path
        assert Path(J["restarted_from"]) == base / "epochs" / "003"
        assert e.state == blobs(3)
        assert (e.best_metric_last, e.epoch_best) == (0.5, 2)


def test_flat_layout_is_used_only_when_ckpts_last_is_missing(tmp_path):
    three_epochs(tmp_path / "old")
    flatten(tmp_path / "old")
    shutil.copytree(tmp_path / "old", tmp_path / "both", symlinks=True)
    with engine(tmp_path / "both") as e:
        train(e, [1], run="b")
    with engine(tmp_path / "both") as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 1
    assert e.state == blobs(1, "b")


@pytest.mark.parametrize("layout", ["ours", "flat"])
def test_restart_off_never_reads(tmp_path, layout):
    three_epochs(tmp_path)
    if layout == "flat":
        flatten(tmp_path)
    base = ckpts(tmp_path) if layout == "ours" else tmp_path
    (base / "last").unlink()
    os.symlink("../../elsewhere/epochs/001", base / "last")
    with engine(tmp_path, ckpt_restart_mode="off") as e:
        assert e.restart() is None
        assert e.state == {"model.bin": b""}
        assert (e.best_metric_last, e.epoch_best) == (None, None)


@pytest.mark.parametrize("layout", ["ours", "flat"])
def test_continuing_after_restart_writes_into_our_layout(tmp_path, layout):
    three_epochs(tmp_path)
    if layout == "flat":
        flatten(tmp_path)
    with engine(tmp_path) as e:
        J = e.restart()
        assert J is not None
        train(e, [4], run="b")
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 4 and e.state == blobs(4, "b")


@pytest.mark.parametrize("call", ["restart(gParameters)", "restart(gParameters, model)",
                                  "restart(Namespace, model)"])
def test_gparameters_passed_to_restart_are_never_taken_for_the_model(tmp_path, call):
    three_epochs(tmp_path)
    g = make_params(tmp_path)
    with engine(tmp_path) as e:
        if call == "restart(gParameters)":
            J = e.restart(g)
        elif call == "restart(gParameters, model)":
            J = e.restart(g, blobs(0))
        else:
            J = e.restart(argparse.Namespace(**g), blobs(0))
    assert J is not None and J["epoch"] == 3 and e.state == blobs(3)


def test_the_base_engine_accepts_every_restart_call_shape(tmp_path):
    g = make_params(tmp_path)
    with CandleCkpt(g, logger=None) as e:
        for args in [(), (object(),), (object(), False), (g,), (g, object())]:
            assert e.restart(*args) is None  # nothing saved: nothing to load into
        with pytest.raises(CkptParamError, match="restart.gParameters, model."):
            e.restart(object(), object())


def test_auto_with_nothing_starts_from_scratch(tmp_path):
    with engine(tmp_path) as e:
        assert e.restart() is None
    assert "starting from scratch" in log_text(tmp_path)


def test_required_with_nothing_raises_not_found(tmp_path):
    with engine(tmp_path, ckpt_restart_mode="required") as e, \
            pytest.raises(CheckpointNotFoundError) as err:
        e.restart()
    assert isinstance(err.value, FileNotFoundError)
    assert "required" in str(err.value)


@pytest.mark.parametrize("layout", ["ours", "flat"])
@pytest.mark.parametrize("mode", ["auto", "required"])
def test_dangling_last_lists_the_checkpoints_and_how_to_roll_back(tmp_path, mode, layout):
    three_epochs(tmp_path)
    if layout == "flat":
        flatten(tmp_path)
    base = ckpts(tmp_path) if layout == "ours" else tmp_path
    shutil.rmtree(base / "epochs" / "003")
    with engine(tmp_path, ckpt_restart_mode=mode) as e:
        if mode == "auto":
            assert e.restart() is None
        else:
            with pytest.raises(CheckpointNotFoundError):
                e.restart()
    log = log_text(tmp_path)
    assert "complete checkpoints on disk: 1, 2" in log
    assert "rollback" in log


# ------------------------------------------------------------------ rollback

def test_rollback_by_relinking_last_then_continuing(tmp_path):
    with engine(tmp_path) as e:
        train(e, range(1, 6))
    last = ckpts(tmp_path) / "last"
    last.unlink()
    os.symlink("epochs/003", last)  # the spec's rollback: re-link by hand
    with engine(tmp_path) as e:
        J = e.restart()
        assert J is not None and J["epoch"] == 3
        assert e.state == blobs(3, "a")
        train(e, [4, 5], run="b")
    base = ckpts(tmp_path)
    assert epoch_dirs(base) == ["001", "002", "003", "004", "005"]
    for epoch in (1, 2, 3):
        assert (base / "epochs" / f"{epoch:03d}" / "model.bin").read_bytes() == \
            blobs(epoch, "a")["model.bin"]
    for epoch in (4, 5):
        assert (base / "epochs" / f"{epoch:03d}" / "model.bin").read_bytes() == \
            blobs(epoch, "b")["model.bin"]
        assert info(tmp_path, epoch)["files"]["model.bin"]["size"] == 3000
    assert link_target(last) == "epochs/005"
    assert not [p for p in (base / "epochs").iterdir() if p.name.startswith(".")]
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 5 and e.state == blobs(5, "b")


def test_rollback_before_the_best_forgets_the_later_best(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3, 4], metrics={1: 0.9, 2: 0.8, 3: 0.7, 4: 0.1})
    assert link_target(ckpts(tmp_path) / "best") == "epochs/004"
    last = ckpts(tmp_path) / "last"
    last.unlink()
    os.symlink("epochs/002", last)
    with engine(tmp_path) as e:
        assert (e.best_metric_last, e.epoch_best) == (0.8, 2)
        assert e.restart() is not None
        train(e, [3, 4], run="b", metrics={3: 0.85, 4: 0.95})
    # best no longer names the abandoned epoch 4: it is back on the run's best, epoch 2
    assert link_target(ckpts(tmp_path) / "best") == "epochs/002"
    assert info(tmp_path, 4)["epoch_best"] == 2


# ------------------------------------------------------------------ validation and fallback

def damage_truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(100)


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def damage_remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage,checksum", [
    (damage_truncate, False), (damage_truncate, True),
    (damage_flip, True),
    (damage_remove, False),
])
@pytest.mark.parametrize("victim", ["model.bin", "extra.bin"])
def test_damaged_file_falls_back_to_the_newest_older_checkpoint(tmp_path, damage, checksum,
                                                                victim):
    three_epochs(tmp_path, ckpt_checksum=checksum)
    damage(ckpts(tmp_path) / "epochs" / "003" / victim)
    with engine(tmp_path, ckpt_checksum=checksum) as e:
        J = e.restart()
    assert J is not None
    assert J["epoch"] == 2
    assert e.state == blobs(2)
    assert Path(J["restarted_from"]) == ckpts(tmp_path) / "epochs" / "002"
    assert [s["epoch"] for s in J["skipped"]] == [3]
    assert victim in J["skipped"][0]["reason"]
    assert Path(J["skipped"][0]["path"]) == ckpts(tmp_path) / "epochs" / "003"
    assert f"skipping {ckpts(tmp_path) / 'epochs' / '003'}: " in log_text(tmp_path)
    assert "restarting from epoch: 2" in log_text(tmp_path)


def test_a_bit_flip_is_not_seen_without_checksums(tmp_path):
    three_epochs(tmp_path)
    damage_flip(ckpts(tmp_path) / "epochs" / "003" / "model.bin")
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 3
    assert e.state["model.bin"] != blobs(3)["model.bin"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unparsable_info_falls_back(tmp_path, content):
    three_epochs(tmp_path)
    (ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json").write_text(content)
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2 and e.state == blobs(2)
    assert [s["epoch"] for s in J["skipped"]] == [3]


def test_missing_info_of_the_last_target_falls_back(tmp_path):
    three_epochs(tmp_path)
    (ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json").unlink()
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2
    assert "missing" in J["skipped"][0]["reason"]


def test_fallback_skips_every_damaged_checkpoint_and_incomplete_ones(tmp_path):
    three_epochs(tmp_path)
    damage_truncate(ckpts(tmp_path) / "epochs" / "003" / "model.bin")
    (ckpts(tmp_path) / "epochs" / "002" / "ckpt-info.json").write_text("{")
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 1 and e.state == blobs(1)
    assert [s["epoch"] for s in J["skipped"]] == [3, 2]


def test_a_backend_that_refuses_the_file_falls_back(tmp_path):
    three_epochs(tmp_path)

    class PickyBackend(FilesBackend):
        def load(self, directory, info):
            if directory.name == "003":
                raise ValueError("cannot parse this model file")
            return super().load(directory, info)

    class Picky(CandleCkptFiles):
        def _new_backend(self):
            return PickyBackend()

    with Picky({"epochs": 9, "ckpt_directory": str(tmp_path)}, logger=None) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2
    assert "cannot parse" in J["skipped"][0]["reason"]


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_nothing_usable(tmp_path, mode):
    with engine(tmp_path) as e:
        train(e, [1])
    damage_truncate(ckpts(tmp_path) / "epochs" / "001" / "model.bin")
    with engine(tmp_path, ckpt_restart_mode=mode) as e:
        if mode == "auto":
            assert e.restart() is None
            assert e.state == {"model.bin": b""}
        else:
            with pytest.raises(CheckpointNotFoundError, match="epoch 1"):
                e.restart()


# ------------------------------------------------------------------ where last points

@pytest.mark.parametrize("target", [
    "../../other/ckpts/epochs/001",   # another tree
    "../epochs_copy/001",             # beside epochs/
    "epochs/001/../../../other/ckpts/epochs/001",
])
def test_last_escaping_the_tree_is_refused(tmp_path, target):
    three_epochs(tmp_path / "run")
    three_epochs(tmp_path / "other")
    shutil.copytree(ckpts(tmp_path / "run") / "epochs", ckpts(tmp_path / "run") / "epochs_copy")
    last = ckpts(tmp_path / "run") / "last"
    last.unlink()
    os.symlink(target, last)
    with engine(tmp_path / "run") as e, pytest.raises(CheckpointCorruptError, match="escapes"):
        e.restart()
    assert e.state == {"model.bin": b""}


def test_last_as_text_pointer_escaping_the_tree_is_refused(tmp_path):
    three_epochs(tmp_path)
    last = ckpts(tmp_path) / "last"
    last.unlink()
    last.write_text(str(ckpts(tmp_path).parent.parent), encoding="utf-8")
    with engine(tmp_path) as e, pytest.raises(CkptError):
        e.restart()


def test_an_absolute_link_into_this_tree_is_followed(tmp_path):
    three_epochs(tmp_path)
    last = ckpts(tmp_path) / "last"
    last.unlink()
    os.symlink(ckpts(tmp_path) / "epochs" / "002", last)
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2


def test_a_dangling_absolute_link_is_reanchored_in_this_tree(tmp_path):
    three_epochs(tmp_path)
    last = ckpts(tmp_path) / "last"
    last.unlink()
    os.symlink(tmp_path / "moved-away" / "ckpts" / "epochs" / "002", last)
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2 and e.state == blobs(2)
    assert log_text(tmp_path).count("re-anchored") == 1  # said once, not also at construction


# ------------------------------------------------------------------ keep scope

def test_keep_policy_only_deletes_this_runs_checkpoints(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3, 4])
    with engine(tmp_path, ckpt_keep_limit=1) as e:
        J = e.restart()
        assert J is not None and J["epoch"] == 4
        train(e, [5, 6, 7, 8], run="b")
    assert epoch_dirs(ckpts(tmp_path)) == ["001", "002", "003", "004", "008"]


def test_keep_policy_spares_the_checkpoint_resumed_from_after_a_rollback(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3])
    last = ckpts(tmp_path) / "last"
    last.unlink()
    os.symlink("epochs/001", last)
    with engine(tmp_path, ckpt_keep_limit=1, ckpt_save_best=False) as e:
        assert e.restart() is not None
        train(e, [2, 3, 4], run="b")
    assert epoch_dirs(ckpts(tmp_path)) == ["001", "004"]


@pytest.mark.parametrize("mode,limit", [("linear", 3), ("exponential", 4), ("exponential", 100),
                                        ("all", 1)])
def test_engine_applies_the_keep_policy_after_every_save(tmp_path, mode, limit):
    metrics = {e: (0.05 if e == 3 else 1.0 + e) for e in range(1, 21)}  # best: epoch 3
    with engine(tmp_path, ckpt_keep_mode=mode, ckpt_keep_limit=limit) as e:
        kept: set[int] = set()
        for epoch in range(1, 21):
            train(e, [epoch], metrics=metrics)
            kept = epochs_to_keep(mode, limit, kept | {epoch}, epoch, 3, {epoch})
            assert sorted(e.epochs) == sorted(kept)
            assert epoch_dirs(ckpts(tmp_path)) == [f"{x:03d}" for x in sorted(kept)]
    assert 3 in kept and 20 in kept
    assert link_target(ckpts(tmp_path) / "best") == "epochs/003"


def test_keep_policy_deletes_within_this_run(tmp_path):
    with engine(tmp_path, ckpt_keep_limit=2,
                ckpt_save_best=False) as e:
        train(e, range(1, 7))
        assert e.epochs == [5, 6]
    assert epoch_dirs(ckpts(tmp_path)) == ["005", "006"]


# ------------------------------------------------------------------ engine state

def test_a_new_engine_knows_the_best_without_calling_restart(tmp_path):
    three_epochs(tmp_path)
    with engine(tmp_path) as e:
        assert (e.best_metric_last, e.epoch_best) == (0.5, 2)
        train(e, [4], run="b", metrics={4: 0.6})
    assert link_target(ckpts(tmp_path) / "best") == "epochs/002"
    assert info(tmp_path, 4)["best_metric_last"] == 0.5
    assert info(tmp_path, 4)["epoch_best"] == 2


def test_a_given_best_metric_last_wins_over_the_checkpoint(tmp_path):
    three_epochs(tmp_path)
    with engine(tmp_path, ckpt_best_metric_last=0.1) as e:
        assert e.best_metric_last == 0.1
        assert e.restart() is not None
        assert e.best_metric_last == 0.1


def test_best_is_read_from_the_checkpoint_restart_falls_back_to(tmp_path):
    three_epochs(tmp_path)
    damage_truncate(ckpts(tmp_path) / "epochs" / "003" / "model.bin")
    with engine(tmp_path) as e:
        J = e.restart()
        assert J is not None and J["epoch"] == 2
        assert (e.best_metric_last, e.epoch_best) == (0.5, 2)


def test_redoing_the_best_epoch_with_a_better_metric_keeps_best_linked(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3], metrics={1: 0.9, 2: 0.8, 3: 0.5})
        train(e, [3], run="b", metrics={3: 0.1})  # the same epoch, saved again
        assert (e.best_metric_last, e.epoch_best) == (0.1, 3)
    assert link_target(ckpts(tmp_path) / "best") == "epochs/003"
    assert link_target(ckpts(tmp_path) / "last") == "epochs/003"
    assert info(tmp_path, 3)["best_metric_last"] == 0.1
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 3 and e.state == blobs(3, "b")


@pytest.mark.parametrize("field,value", [
    ("best_metric_last", "not a number"),
    ("best_metric_last", [0.5]),
    ("epoch", "3"),
    ("files", ["model.bin"]),
    ("files", {"model.bin": {"size": 3000}, "../escape": {"size": 1}}),
])
def test_info_with_a_bad_field_falls_back_and_construction_still_works(tmp_path, field, value):
    three_epochs(tmp_path)
    path = ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json"
    data = info(tmp_path, 3)
    data[field] = value
    path.write_text(json.dumps(data), encoding="utf-8")
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2 and e.state == blobs(2)
    assert [s["epoch"] for s in J["skipped"]] == [3]
    assert (e.best_metric_last, e.epoch_best) == (0.5, 2)
