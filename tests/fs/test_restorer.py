"""restorer with a fake backend: validate everything, fall back over damage, stop on a
mismatch, and apply only the checkpoint finally chosen; locate and peek_best, the original
layout's best link, refused pointers, and what mode "required" says."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from candle_ckpt import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CkptParamError,
)
from candle_ckpt.backends.base import Restored
from candle_ckpt.logs import CkptLog
from candle_ckpt.restorer import BestSoFar, Restorer
from candle_ckpt.storage.layout import Layout
from tests.helpers.fs import ckpts, engine, train


class FakeBackend:
    """Refuses the epochs named in ``damaged``/``mismatch``; records what it applied."""

    name = "fake"

    def __init__(self, damaged=(), mismatch=(), misuse=False) -> None:
        self.damaged, self.mismatch, self.misuse = set(damaged), set(mismatch), misuse
        self.checked: list[int] = []
        self.applied: list[int] = []

    def capture(self, live):
        raise AssertionError("not used")

    def write(self, snapshot, sink):
        raise AssertionError("not used")

    def load(self, directory: Path, info: dict) -> Restored:
        epoch = int(directory.name)
        self.checked.append(epoch)
        if self.misuse:
            raise CkptParamError("restart: no model")
        if epoch in self.mismatch:
            raise CheckpointMismatchError(f"epoch {epoch}: layer is (3,) vs (4,)")
        if epoch in self.damaged:
            raise ValueError("truncated tensor data")
        return Restored(lambda: self.applied.append(epoch) or ["a note"])


def three(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3])


def restorer(root: Path, mode: str = "auto", checksums: bool = False) -> Restorer:
    return Restorer(root, mode, checksums, CkptLog(root / "ckpt.log", None, False))


def test_damage_falls_back_and_only_the_chosen_checkpoint_is_applied(tmp_path):
    three(tmp_path)
    backend = FakeBackend(damaged={3, 2})
    result = restorer(tmp_path).restart(backend)
    assert result is not None and result.epoch == 1
    assert backend.checked == [3, 2, 1] and backend.applied == [1]
    assert [s["epoch"] for s in result.J["skipped"]] == [3, 2]
    assert "truncated" in result.J["skipped"][0]["reason"]
    assert "a note" in (tmp_path / "ckpt.log").read_text()


def test_each_skipped_checkpoint_is_recorded_with_its_directory_and_why(tmp_path):
    three(tmp_path)
    result = restorer(tmp_path).restart(FakeBackend(damaged={3, 2}))
    assert result is not None and result.epoch == 1
    epochs = ckpts(tmp_path) / "epochs"
    assert [(s["epoch"], s["batch"], s["path"]) for s in result.J["skipped"]] == [
        (3, 0, str(epochs / "003")), (2, 0, str(epochs / "002"))]
    assert all(Path(s["path"]).is_dir() for s in result.J["skipped"])
    assert all("truncated tensor data" in s["reason"] for s in result.J["skipped"])


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_a_mismatch_stops_at_once_without_falling_back_or_applying(tmp_path, mode):
    three(tmp_path)
    backend = FakeBackend(mismatch={3})
    with pytest.raises(CheckpointMismatchError, match="epoch 3"):
        restorer(tmp_path, mode).restart(backend)
    assert backend.checked == [3] and backend.applied == []


def test_misuse_is_not_mistaken_for_damage(tmp_path):
    three(tmp_path)
    backend = FakeBackend(misuse=True)
    with pytest.raises(CkptParamError):
        restorer(tmp_path).restart(backend)
    assert backend.checked == [3]


def test_nothing_valid(tmp_path):
    three(tmp_path)
    assert restorer(tmp_path).restart(FakeBackend(damaged={1, 2, 3})) is None
    with pytest.raises(CheckpointNotFoundError, match="epoch 3"):
        restorer(tmp_path, "required").restart(FakeBackend(damaged={1, 2, 3}))


def test_an_invalid_info_record_is_damage(tmp_path):
    three(tmp_path)
    info = ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json"
    text = info.read_text().replace('"best_metric_last": ', '"best_metric_last": "x", "_": ')
    info.write_text(text)
    backend = FakeBackend()
    result = restorer(tmp_path).restart(backend)
    assert result is not None and result.epoch == 2 and backend.checked == [2]
    assert "best_metric_last" in result.J["skipped"][0]["reason"]


def test_peek_best_reads_what_restart_would_use_and_never_raises(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3], metrics={1: 0.3, 2: 0.1, 3: 0.2})
    best = restorer(tmp_path).peek_best()
    assert best is not None and (best.value, best.epoch) == (0.1, 2)
    (ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json").write_text("[" * 100000)
    assert restorer(tmp_path).peek_best() is None


# ------------------------------------------- locate, peek_best, the original's best link
class NotingBackend:
    """Loads every checkpoint; gives the notes and warnings it is told to."""

    name = "fake"

    def __init__(self, notes=(), warnings=()) -> None:
        self.loaded: list[str] = []
        self.notes, self.warnings = list(notes), list(warnings)

    def capture(self, live):
        raise AssertionError("not used")

    def write(self, snapshot, sink):
        raise AssertionError("not used")

    def load(self, directory: Path, info: dict) -> Restored:
        self.loaded.append(directory.name)
        return Restored(lambda: list(self.warnings), notes=list(self.notes))


def _original_tree(root: Path, epochs=(1, 2), best=1, last=2) -> Layout:
    """The newer original CANDLE layout: <root>/{epochs,last,best}, no format_version."""
    lay = Layout.flat(root)
    for e in epochs:
        d = lay.epoch_dir(e)
        d.mkdir(parents=True)
        (d / "model.h5").write_bytes(b"weights" * 10)
        (d / "ckpt-info.json").write_text(json.dumps(
            {"epoch": e, "model_file": "model.h5", "best_metric_last": 0.5}))
    lay.best.symlink_to(lay.epoch_dir(best))
    lay.last.symlink_to(lay.epoch_dir(last))
    return lay


def test_locate_without_last_says_where_it_looked(tmp_path):
    where = restorer(tmp_path).locate()
    assert where.layout is None and where.epoch is None
    assert str(tmp_path / "ckpts") in where.why


def test_locate_a_dangling_last_is_not_refused(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1])
    last = ckpts(tmp_path) / "last"
    last.unlink()
    last.symlink_to("epochs/009")
    where = restorer(tmp_path).locate()
    assert where.layout == Layout.ours(tmp_path) and where.epoch is None
    assert "dangling" in where.why


@pytest.mark.parametrize("plant", ["escapes", "directory", "file", "fifo", "empty"])
def test_a_last_that_names_no_checkpoint_is_refused(tmp_path, plant):
    import os

    with engine(tmp_path) as e:
        train(e, [1])
    last = ckpts(tmp_path) / "last"
    last.unlink()
    if plant == "escapes":
        last.symlink_to("../../elsewhere")
    elif plant == "directory":
        last.mkdir()
    elif plant == "file":
        last.write_text("epochs/nonsense")
    elif plant == "fifo":
        os.mkfifo(last)
    else:
        last.write_text("")
    with pytest.raises(CheckpointCorruptError, match="rollback"):
        restorer(tmp_path).locate()
    with pytest.raises(CheckpointCorruptError):
        restorer(tmp_path).restart(NotingBackend())
    assert restorer(tmp_path).peek_best() is None


def test_a_text_last_naming_a_missing_epoch_is_dangling_not_refused(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1])
    last = ckpts(tmp_path) / "last"
    last.unlink()
    last.write_text("epochs/007")
    where = restorer(tmp_path).locate()
    assert where.epoch is None and "dangling" in where.why


def test_peek_best_reads_the_best_of_the_checkpoint_last_names(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3], metrics={1: 0.9, 2: 0.3, 3: 0.6})
    assert restorer(tmp_path).peek_best() == BestSoFar(0.3, 2)
    (tmp_path / "nothing").mkdir()
    assert restorer(tmp_path / "nothing").peek_best() is None
    (ckpts(tmp_path) / "epochs" / "003" / "ckpt-info.json").write_text("[]")
    assert restorer(tmp_path).peek_best() is None


def test_the_originals_best_epoch_comes_from_its_best_link(tmp_path):
    _original_tree(tmp_path, best=1, last=2)
    backend = NotingBackend()
    result = restorer(tmp_path).restart(backend)
    assert result is not None and result.epoch == 2 and backend.loaded == ["002"]
    assert result.best == BestSoFar(0.5, 1)
    assert result.J["batch"] == 0 and "batch" not in json.loads(
        (tmp_path / "epochs" / "002" / "ckpt-info.json").read_text())
    assert restorer(tmp_path).peek_best() == BestSoFar(0.5, 1)


def test_a_moved_original_tree_is_reanchored_and_logged(tmp_path, caplog):
    lay = _original_tree(tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")
    r = Restorer(tmp_path / "new", "auto", False,
                 CkptLog(tmp_path / "new" / "ckpt.log", logging.getLogger("t"), False))
    with caplog.at_level(logging.INFO, logger="t"):
        where = r.locate()
    assert where.epoch == 2 and where.layout == Layout.flat(tmp_path / "new")
    assert any("re-anchored" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="t"):
        r.locate(announce=False)
    assert not any("re-anchored" in m for m in caplog.messages)
    assert lay.root == tmp_path / "old"


def test_restart_returns_j_with_where_it_restarted_from(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2])
    result = restorer(tmp_path).restart(NotingBackend())
    assert result is not None and result.epoch == 2 and result.batch == 0
    assert result.J["epoch"] == 2 and result.J["batch"] == 0
    assert result.J["restarted_from"] == str(ckpts(tmp_path) / "epochs" / "002")
    assert result.J["skipped"] == [] and result.directory == ckpts(tmp_path) / "epochs" / "002"


def test_restart_falls_back_over_a_bad_record_and_a_batch_mismatch(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2, 3])
    d3 = ckpts(tmp_path) / "epochs" / "003"
    info3 = json.loads((d3 / "ckpt-info.json").read_text())
    info3["batch"] = 4
    info3["partial"] = True
    (d3 / "ckpt-info.json").write_text(json.dumps(info3))
    d2 = ckpts(tmp_path) / "epochs" / "002"
    info2 = json.loads((d2 / "ckpt-info.json").read_text())
    info2["partial"] = True
    (d2 / "ckpt-info.json").write_text(json.dumps(info2))
    backend = NotingBackend()
    result = restorer(tmp_path).restart(backend)
    assert result is not None and result.epoch == 1 and backend.loaded == ["001"]
    reasons = [s["reason"] for s in result.J["skipped"]]
    assert "says batch 4" in reasons[0] and "partial" in reasons[1]
    assert [s["epoch"] for s in result.J["skipped"]] == [3, 2]


def test_restart_warns_when_checksums_are_asked_for_but_not_recorded(tmp_path, caplog):
    with engine(tmp_path, ckpt_checksum=False) as e:
        train(e, [1])
    r = Restorer(tmp_path, "auto", True,
                 CkptLog(tmp_path / "ckpt.log", logging.getLogger("t2"), False))
    with caplog.at_level(logging.INFO, logger="t2"):
        assert r.restart(NotingBackend(notes=["n1"], warnings=["w1"])) is not None
    warnings = [rec.message for rec in caplog.records if rec.levelno == logging.WARNING]
    infos = [rec.message for rec in caplog.records if rec.levelno == logging.INFO]
    assert any("without checksums" in m for m in warnings)
    assert "w1" in warnings and "n1" in infos
    assert any("restarted from" in m for m in infos)


def test_restart_with_checksums_recorded_does_not_warn(tmp_path, caplog):
    with engine(tmp_path, ckpt_checksum=True) as e:
        train(e, [1])
    r = Restorer(tmp_path, "auto", True,
                 CkptLog(tmp_path / "ckpt.log", logging.getLogger("t3"), False))
    with caplog.at_level(logging.INFO, logger="t3"):
        assert r.restart(NotingBackend(), verbose=False) is not None
    assert not any("without checksums" in m for m in caplog.messages)
    assert not any("restarted from" in m for m in caplog.messages)


def test_required_names_the_complete_checkpoints_and_what_was_skipped(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1, 2])
    for e in ("001", "002"):
        (ckpts(tmp_path) / "epochs" / e / "model.bin").write_bytes(b"")
    with pytest.raises(CheckpointNotFoundError) as err:
        restorer(tmp_path, "required").restart(NotingBackend())
    text = str(err.value)
    assert "1, 2" in text and "rollback" in text and "epoch 2:" in text and "epoch 1:" in text
    assert restorer(tmp_path, "auto").restart(NotingBackend()) is None


def test_required_with_nothing_on_disk(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as err:
        restorer(tmp_path, "required").restart(NotingBackend())
    assert "none" in str(err.value) and "rollback" not in str(err.value)
    assert "skipped" not in str(err.value)
