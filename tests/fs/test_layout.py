"""On-disk layout and ckpt-info.json, links and text-pointer fallback; listing, pointers,
keys and summaries of a Layout."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from candle_ckpt.storage.integrity import checksum_file
from candle_ckpt.storage.layout import (
    INFO_FILE,
    CkptKey,
    Layout,
    epoch_name,
    parse_epoch,
    parse_key,
    read_info_file,
    summarize,
)
from tests.helpers.fs import blobs, ckpts, engine, epoch_dirs, info, link_target, train


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


def _epoch(layout: Layout, epoch: int, batch: int = 0, complete: bool = True) -> Path:
    d = layout.epoch_dir(epoch, batch)
    d.mkdir(parents=True)
    if complete:
        (d / INFO_FILE).write_text(json.dumps({"epoch": epoch}))
    return d


# --- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch,name", [(0, "000"), (7, "007"), (999, "999"), (1000, "1000")])
def test_epoch_names_round_trip(epoch, name):
    assert epoch_name(epoch) == name and parse_epoch(name) == epoch


@pytest.mark.parametrize("name", ["7", "0007", "07", "007\n", " 007", "-01", "abc", "", "٠٠٧",
                                  "1" * 41, "007+000001", 7, None])
def test_parse_epoch_refuses_non_canonical_names(name):
    assert parse_epoch(name) is None


def test_parse_epoch_accepts_forty_digits():
    assert parse_epoch("1" * 40) == int("1" * 40)


@pytest.mark.parametrize("name,key", [
    ("007", CkptKey(7)), ("007+000001", CkptKey(7, 1)), ("012+123456", CkptKey(12, 123456)),
    ("1000+1234567", CkptKey(1000, 1234567)),
])
def test_parse_key_reads_epoch_and_mid_epoch_names(name, key):
    assert parse_key(name) == key
    assert key.name == name


@pytest.mark.parametrize("name", ["007+000000", "007+00001", "7+000001", "007+0000001",
                                  "007+", "+000001", "007-000001", "007+00000a", "007+000001 ",
                                  "0" * 50 + "+000001", 7, None, "abc"])
def test_parse_key_refuses_other_names(name):
    assert parse_key(name) is None


def test_ckpt_keys_sort_mid_epoch_between_epochs():
    keys = [CkptKey(8), CkptKey(7, 3), CkptKey(7), CkptKey(7, 12)]
    assert sorted(keys) == [CkptKey(7), CkptKey(7, 3), CkptKey(7, 12), CkptKey(8)]
    assert not CkptKey(7).partial and CkptKey(7, 1).partial
    assert str(CkptKey(7)) == "7" and str(CkptKey(7, 3)) == "7+3"
    assert CkptKey(7, 3).name == "007+000003" and CkptKey(7).name == "007"


# --- listing ----------------------------------------------------------------------------

def test_listing_ignores_stray_files_links_and_non_numeric_directories(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    _epoch(lay, 3, complete=False)
    _epoch(lay, 4, batch=20)
    (lay.epochs_dir / "002").write_text("a file named like an epoch")
    (lay.epochs_dir / "005").symlink_to(lay.epoch_dir(1))
    (lay.epochs_dir / "notes").mkdir()
    (lay.epochs_dir / "6").mkdir()
    (lay.epochs_dir / "006x").mkdir()
    (lay.epochs_dir / "007+000002").write_text("a file named like a mid-epoch checkpoint")
    assert lay.list_epochs() == [1, 3]
    assert lay.complete_epochs() == [1]
    assert lay.complete_keys() == [CkptKey(1), CkptKey(4, 20)]


def test_listing_a_missing_or_file_epochs_dir_is_empty(tmp_path):
    lay = Layout.ours(tmp_path)
    assert lay.list_epochs() == [] and lay.complete_keys() == [] and lay.leftovers() == []
    lay.base.mkdir()
    lay.epochs_dir.write_text("not a directory")
    assert lay.list_epochs() == [] and lay.complete_keys() == []


def test_an_info_file_that_is_not_a_regular_file_is_not_complete(tmp_path):
    lay = Layout.ours(tmp_path)
    d = _epoch(lay, 1, complete=False)
    (d / INFO_FILE).mkdir()
    assert not lay.is_complete(1)
    d2 = _epoch(lay, 2, complete=False)
    (d2 / INFO_FILE).symlink_to(d / INFO_FILE)
    assert not lay.is_complete(2)
    assert lay.complete_epochs() == []


def test_leftovers_are_asides_and_half_deleted_directories(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    for name in (".aside-001-x", ".deleting-002", ".other", "aside-003"):
        (lay.epochs_dir / name).mkdir()
    assert [p.name for p in lay.leftovers()] == [".aside-001-x", ".deleting-002"]


# --- pointers ---------------------------------------------------------------------------

def test_an_empty_text_pointer_is_a_problem(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    lay.last.write_text("  \n")
    p = lay.read_pointer("last")
    assert p.kind == "file" and p.problem == "empty pointer" and not p.ok and p.key is None


def test_an_unreadable_text_pointer_is_a_problem(tmp_path, monkeypatch):
    from candle_ckpt.storage import safeio

    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    lay.last.write_text("epochs/001")

    def refuse(*args, **kwargs):  # chmod 000 does not stop root: fail the read itself
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(safeio, "read_regular", refuse)
    p = lay.read_pointer("last")
    assert p.kind == "file" and not p.ok and p.epoch is None
    assert p.problem == "unreadable pointer file: Permission denied"


def test_a_text_pointer_that_is_not_utf8_is_a_problem(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    lay.best.write_bytes(b"epochs/\xff01")
    p = lay.read_pointer("best")
    assert p.kind == "file" and p.problem.startswith("unreadable pointer file")


def test_a_too_large_text_pointer_is_a_problem(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    lay.last.write_text("epochs/001" + " " * 5000)
    assert lay.read_pointer("last").problem.startswith("unreadable pointer file")


def test_a_text_pointer_names_an_epoch(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    lay.last.write_text("epochs/001\n")
    p = lay.read_pointer("last")
    assert (p.kind, p.raw, p.epoch, p.problem, p.ok) == ("file", "epochs/001", 1, None, True)
    assert p.key == CkptKey(1)


def test_a_link_pointer_to_a_mid_epoch_checkpoint(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 2, batch=40)
    lay.last.symlink_to("epochs/002+000040")
    p = lay.read_pointer("last")
    assert (p.kind, p.epoch, p.batch, p.ok) == ("symlink", 2, 40, True)
    assert p.key == CkptKey(2, 40)
    lay.best.symlink_to("epochs/002+000041")
    p = lay.read_pointer("best")
    assert p.problem.startswith("dangling") and p.epoch is None


@pytest.mark.parametrize("raw", ["epochs/001\0x", "epochs/001\nepochs/002", "../epochs/001",
                                 "/etc", "epochs/../../epochs/001", "001"])
def test_pointers_outside_the_tree_are_problems(tmp_path, raw):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    (tmp_path / "epochs").mkdir()
    (tmp_path / "epochs" / "001").mkdir()
    (tmp_path / "001").mkdir()
    lay.last.write_text(raw)
    p = lay.read_pointer("last")
    assert not p.ok and p.problem.startswith("escapes the tree"), p


def test_missing_dangling_directory_and_other_pointers(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    p = lay.read_pointer("last")
    assert (p.name, p.path, p.kind, p.problem) == ("last", lay.last, "missing", "missing")
    lay.last.symlink_to("epochs/002")
    assert lay.read_pointer("last").problem.startswith("dangling")
    lay.best.mkdir()
    assert lay.read_pointer("best").kind == "directory"
    os.mkfifo(lay.base / "fifo")
    p = lay.read_pointer("fifo")
    assert p.kind == "other" and not p.ok


def test_an_absolute_link_from_a_moved_tree_is_reanchored(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 3)
    lay.last.symlink_to(tmp_path / "gone" / "ckpts" / "epochs" / "003")
    p = lay.read_pointer("last")
    assert p.ok and p.epoch == 3 and p.reanchored
    lay.best.symlink_to(tmp_path / "gone" / "ckpts" / "epochs" / "004")
    p = lay.read_pointer("best")
    assert not p.ok and p.problem.startswith("dangling")
    lay.best.unlink()
    lay.best.symlink_to(tmp_path / "gone" / "elsewhere" / "003")
    assert lay.read_pointer("best").problem.startswith("dangling")


def test_an_absolute_link_into_this_tree_is_not_reanchored(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 3)
    lay.last.symlink_to(lay.epoch_dir(3))
    p = lay.read_pointer("last")
    assert p.ok and p.epoch == 3 and not p.reanchored


# --- choosing the layout ----------------------------------------------------------------

def test_for_reading_prefers_a_last_then_epochs_then_ours(tmp_path):
    assert Layout.for_reading(tmp_path) == Layout.ours(tmp_path)
    assert Layout.for_restart(tmp_path) is None
    flat = Layout.flat(tmp_path)
    flat.epochs_dir.mkdir()
    assert Layout.for_reading(tmp_path) == flat
    ours = Layout.ours(tmp_path)
    ours.epochs_dir.mkdir(parents=True)
    assert Layout.for_reading(tmp_path) == ours  # both have epochs/: ours first
    flat.last.symlink_to("epochs/001")  # dangling, but there
    assert Layout.for_reading(tmp_path) == flat
    assert Layout.for_restart(tmp_path) == flat
    ours.last.write_text("epochs/001")
    assert Layout.for_reading(tmp_path) == ours


def test_for_reading_ignores_an_epochs_file(tmp_path):
    (tmp_path / "epochs").write_text("x")
    assert Layout.for_reading(tmp_path) == Layout.ours(tmp_path)


def test_layout_paths(tmp_path):
    ours, flat = Layout.ours(tmp_path), Layout.flat(tmp_path)
    assert not ours.original and flat.original
    assert ours.base == tmp_path / "ckpts" and flat.base == tmp_path
    assert ours.epochs_dir == tmp_path / "ckpts" / "epochs"
    assert (ours.last, ours.best, ours.work) == (
        tmp_path / "ckpts" / "last", tmp_path / "ckpts" / "best", tmp_path / "ckpts" / "work")
    assert ours.log_file == tmp_path / "ckpt.log" and ours.lock_file == tmp_path / "ckpt.lock"
    assert flat.log_file == tmp_path / "ckpt.log"
    assert ours.epoch_dir(4, 2) == ours.epochs_dir / "004+000002"
    assert ours.pointer_text(4) == "epochs/004"
    assert ours.pointer_text(4, 2) == "epochs/004+000002"


# --- summaries --------------------------------------------------------------------------

def test_summarize_lists_every_epoch_with_info_errors_and_markers(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    _epoch(lay, 2)
    _epoch(lay, 3, complete=False)
    d4 = _epoch(lay, 4, complete=False)
    (d4 / INFO_FILE).write_text("not json")
    d5 = _epoch(lay, 5, complete=False)
    (d5 / INFO_FILE).mkdir()
    (lay.epochs_dir / "006").write_text("stray")
    lay.last.symlink_to("epochs/002")
    lay.best.write_text("epochs/001")
    rows = {r.epoch: r for r in summarize(lay)}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert rows[1].complete and rows[1].info == {"epoch": 1} and rows[1].markers == ["best"]
    assert rows[2].markers == ["last"] and rows[2].error is None
    assert not rows[3].complete and rows[3].error is None and rows[3].info is None
    assert rows[4].complete and rows[4].info is None
    assert rows[4].error.startswith(f"unreadable {INFO_FILE}")
    assert not rows[5].complete and rows[5].error == f"{INFO_FILE} is not a regular file"
    assert rows[1].path == lay.epoch_dir(1) and rows[1].key == CkptKey(1)


def test_summarize_marks_both_pointers_on_one_epoch_and_none_for_bad_ones(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    lay.last.symlink_to("epochs/001")
    lay.best.symlink_to("epochs/001")
    assert summarize(lay)[0].markers == ["last", "best"]
    lay.best.unlink()
    lay.best.write_text("")
    assert summarize(lay)[0].markers == ["last"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root looks into any directory")
def test_summarize_reports_an_epoch_that_cannot_be_looked_into(tmp_path):
    lay = Layout.ours(tmp_path)
    d = _epoch(lay, 1, complete=False)
    d.chmod(0)
    try:
        row = summarize(lay)[0]
        assert not row.complete and row.error.startswith("cannot be looked into")
    finally:
        d.chmod(0o755)


def test_summarize_of_an_empty_layout(tmp_path):
    assert summarize(Layout.ours(tmp_path)) == []


# --- the info file ----------------------------------------------------------------------

def test_read_info_file_accepts_an_object_with_infinity(tmp_path):
    p = tmp_path / INFO_FILE
    p.write_text('{"best_metric_last": Infinity, "epoch": 2}')
    assert read_info_file(p) == {"best_metric_last": float("inf"), "epoch": 2}


@pytest.mark.parametrize("content", [b"[]", b"3", b"not json", b"\xff\xfe", b"[" * 100000,
                                     b'{"a": ' + b"9" * 5000 + b"}"])
def test_read_info_file_refuses_bad_content_with_value_error(tmp_path, content):
    p = tmp_path / INFO_FILE
    p.write_bytes(content)
    with pytest.raises(ValueError):
        read_info_file(p)


def test_read_info_file_refuses_a_link_and_a_missing_file(tmp_path):
    (tmp_path / "real").write_text("{}")
    (tmp_path / INFO_FILE).symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        read_info_file(tmp_path / INFO_FILE)
    with pytest.raises(FileNotFoundError):
        read_info_file(tmp_path / "nope")


def test_read_info_of_a_layout(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 2, batch=5)
    assert lay.read_info(2, 5) == {"epoch": 2}
    assert lay.is_complete(2, 5) and not lay.is_complete(2)


def test_a_pointer_that_cannot_be_looked_at_is_other_and_keeps_its_path(tmp_path):
    lay = Layout.ours(tmp_path)
    _epoch(lay, 1)
    p = lay.read_pointer("la\0st")  # lstat raises ValueError: an embedded NUL
    assert (p.name, p.path, p.kind, p.epoch) == ("la\0st", lay.base / "la\0st", "other", None)
    assert p.problem.startswith("cannot be looked at")
    p = lay.read_pointer("x" * 300)  # ENAMETOOLONG
    assert (p.path, p.kind) == (lay.base / ("x" * 300), "other") and not p.ok
