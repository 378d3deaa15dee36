"""On-disk layout and ckpt-info.json (DESIGN §4), links and text-pointer fallback."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from datetime import datetime

import pytest
from fshelpers import blobs, ckpts, engine, epoch_dirs, info, link_target, train

from candle_ckpt.storage.integrity import checksum_file


def strict_load(text):
    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_saves_follow_the_design_layout(tmp_path):
    with engine(tmp_path) as e:
        train(e, range(1, 4))
    assert (tmp_path / "ckpt.log").is_file()
    base = ckpts(tmp_path)
    assert epoch_dirs(base) == ["001", "002", "003"]
    for n in ("001", "002", "003"):
        assert sorted(os.listdir(base / "epochs" / n)) == ["ckpt-info.json", "extra.bin",
                                                           "model.bin"]
    assert not os.path.lexists(base / "work")
    assert (base / "epochs" / "003" / "model.bin").read_bytes() == blobs(3)["model.bin"]


def test_last_and_best_are_relative_symlinks(tmp_path):
    with engine(tmp_path) as e:
        train(e, range(1, 4), metrics={1: 0.5, 2: 0.2, 3: 0.3})
    base = ckpts(tmp_path)
    assert (base / "last").is_symlink() and (base / "best").is_symlink()
    assert os.readlink(base / "last") == "epochs/003"
    assert os.readlink(base / "best") == "epochs/002"


def test_a_moved_tree_still_restarts_through_its_relative_links(tmp_path):
    with engine(tmp_path / "a") as e:
        train(e, range(1, 3))
    shutil.move(tmp_path / "a", tmp_path / "b")
    with engine(tmp_path / "b") as e:
        J = e.restart()
        assert J is not None and J["epoch"] == 2
        assert e.state == blobs(2)


def test_ckpt_info_is_strict_json_with_every_design_field(tmp_path):
    with engine(tmp_path, ckpt_checksum=True, ckpt_metadata="job 7") as e:
        train(e, [1, 2], metrics={1: 0.5, 2: 0.7})
    text = (ckpts(tmp_path) / "epochs" / "002" / "ckpt-info.json").read_text(encoding="utf-8")
    J = strict_load(text)
    required = {"epoch", "save_best_metric", "best_metric_last", "model_file", "checksum",
                "timestamp", "time_elapsed", "metadata", "format_version", "backend",
                "metric_value", "epoch_best", "best_mode", "checksum_algorithm", "files"}
    assert required <= set(J)
    assert J["epoch"] == 2
    assert J["save_best_metric"] == "val_loss"
    assert J["best_metric_last"] == 0.5 and J["epoch_best"] == 1
    assert J["metric_value"] == 0.7
    assert J["best_mode"] == "min"
    assert J["model_file"] == "model.bin"
    assert J["metadata"] == "job 7"
    assert J["backend"] == "files"
    datetime.strptime(J["timestamp"], "%Y-%m-%d %H:%M:%S")
    assert isinstance(J["time_elapsed"], (int, float)) and J["time_elapsed"] >= 0
    assert info(tmp_path, 1)["time_elapsed"] == "__FIRST__"


def test_files_manifest_has_every_file_with_size_and_checksum(tmp_path):
    with engine(tmp_path, ckpt_checksum=True) as e:
        train(e, [1])
    d = ckpts(tmp_path) / "epochs" / "001"
    J = info(tmp_path, 1)
    algorithm = J["checksum_algorithm"]
    assert set(J["files"]) == {"model.bin", "extra.bin"}
    for name, entry in J["files"].items():
        assert entry["size"] == (d / name).stat().st_size == len(blobs(1)[name])
        assert entry["checksum"] == checksum_file(d / name, algorithm)
    assert J["checksum"] == J["files"]["model.bin"]["checksum"]


def test_without_checksums_the_manifest_has_sizes_only(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1])
    J = info(tmp_path, 1)
    assert J["checksum"] == "__DISABLED__"
    assert J["files"] == {"model.bin": {"size": 3000}, "extra.bin": {"size": 517}}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_is_written_as_null(tmp_path, bad):
    with engine(tmp_path) as e:
        e.set_model(blobs(1))
        assert e.ckpt_epoch(0, "-", bad)  # saved on the interval, never as a best
    J = strict_load(
        (ckpts(tmp_path) / "epochs" / "001" / "ckpt-info.json").read_text(encoding="utf-8"))
    assert J["metric_value"] is None
    assert J["best_metric_last"] is None and J["epoch_best"] is None


def test_an_infinite_initial_best_is_written_as_null(tmp_path):
    with engine(tmp_path, ckpt_best_metric_last="inf", ckpt_save_best=False) as e:
        e.set_model(blobs(1))
        assert e.ckpt_epoch(0, "-", 0.5)
    J = strict_load(
        (ckpts(tmp_path) / "epochs" / "001" / "ckpt-info.json").read_text(encoding="utf-8"))
    assert J["best_metric_last"] is None


def test_epoch_directories_widen_past_999(tmp_path):
    with engine(tmp_path, epochs=2000) as e:
        train(e, [999, 1000])
    assert epoch_dirs(ckpts(tmp_path)) == ["1000", "999"]
    assert link_target(ckpts(tmp_path) / "last") == "epochs/1000"


def test_text_pointers_are_written_where_symlinks_are_refused(tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError(errno.EPERM, "symlinks not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    with engine(tmp_path) as e:
        train(e, [1, 2], metrics={1: 0.1, 2: 0.2})
    base = ckpts(tmp_path)
    assert not (base / "last").is_symlink() and (base / "last").is_file()
    assert link_target(base / "last") == "epochs/002"
    assert link_target(base / "best") == "epochs/001"
    monkeypatch.undo()
    with engine(tmp_path) as e:
        assert (e.best_metric_last, e.epoch_best) == (0.1, 1)
        J = e.restart()
        assert J is not None and J["epoch"] == 2 and e.state == blobs(2)


def test_a_hand_written_text_pointer_is_read(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3])
    last = ckpts(tmp_path) / "last"
    last.unlink()
    last.write_text("epochs/002\n", encoding="utf-8")
    with engine(tmp_path) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 2


def test_saving_replaces_a_text_pointer_with_a_link(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1])
    last = ckpts(tmp_path) / "last"
    last.unlink()
    last.write_text("epochs/001\n", encoding="utf-8")
    with engine(tmp_path) as e:
        e.restart()
        train(e, [2])
    assert last.is_symlink() and os.readlink(last) == "epochs/002"
