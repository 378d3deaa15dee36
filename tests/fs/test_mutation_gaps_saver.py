"""saver: links, bookkeeping, mid-epoch supersession, keep policy, async (issue 17)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from candle_ckpt import CheckpointWriteError
from candle_ckpt.backends.base import Restored, Written
from candle_ckpt.logs import CkptLog
from candle_ckpt.record import SaveRecord
from candle_ckpt.saver import AsyncSaver, KeepRule, Saver
from candle_ckpt.storage.commit import Committer
from candle_ckpt.storage.layout import CkptKey, Layout
from candle_ckpt.storage.sink import FileSink


class Backend:
    name = "fake"

    def __init__(self, model_file: str = "model.bin", by_path: bool = False) -> None:
        self.model_file, self.by_path = model_file, by_path
        self.fail: BaseException | None = None

    def capture(self, live: bool) -> dict[str, bytes]:
        return {"model.bin": b"m" * 64, "extra.bin": b"e" * 8}

    def write(self, snapshot: dict[str, bytes], sink: FileSink) -> Written:
        if self.fail is not None:
            raise self.fail
        for name, data in snapshot.items():
            if self.by_path:
                sink.path(name).write_bytes(data)
            else:
                with sink.open(name) as f:
                    f.write(data)
        return Written(self.model_file, {"backend_field": 1})

    def load(self, directory: Path, info: dict) -> Restored:
        return Restored(lambda: [])


def record(epoch: int, *, best: bool = False, epoch_best: int | None = None, batch: int = 0,
           algorithm: str | None = None, reason: str = "") -> SaveRecord:
    return SaveRecord(epoch=epoch, metric_value=1.0 / (epoch + 1), is_best=best,
                      best_metric_last=None, epoch_best=epoch if best else epoch_best,
                      save_best_metric="val_loss", best_mode="min",
                      checksum_algorithm=algorithm, metadata=None, backend="fake", time=0.0,
                      time_previous=None, batch=batch, reason=reason)


KEEP_ALL = KeepRule("all", 10)


def make(root: Path, keep: KeepRule = KEEP_ALL, logger=None,
         backend: Backend | None = None) -> Saver:
    layout = Layout.ours(root)
    log = CkptLog(layout.log_file, logger, False)
    return Saver(layout, Committer(layout, log.info), backend or Backend(), log, keep)


def save(s: Saver, rec: SaveRecord) -> Path:
    return s.save(rec, s.backend.capture(False))


def test_save_points_last_and_best_and_writes_the_info(tmp_path):
    s = make(tmp_path)
    d = save(s, record(1, best=True, algorithm="xxh3_64"))
    assert d == s.layout.epoch_dir(1)
    assert s.layout.read_pointer("last").epoch == 1
    assert s.layout.read_pointer("best").epoch == 1
    info = json.loads((d / "ckpt-info.json").read_text())
    assert info["model_file"] == "model.bin" and info["backend_field"] == 1
    assert set(info["files"]) == {"model.bin", "extra.bin"}
    assert all("checksum" in f for f in info["files"].values())
    assert not s.layout.work.exists()
    assert s.run_epochs == [1] and s.time_saving > 0


def test_files_written_by_path_are_in_the_manifest(tmp_path):
    s = make(tmp_path, backend=Backend(by_path=True))
    d = save(s, record(1, algorithm="crc32"))
    info = json.loads((d / "ckpt-info.json").read_text())
    assert info["files"]["model.bin"]["size"] == 64 and "checksum" in info["files"]["extra.bin"]


def test_a_new_non_best_epoch_moves_last_but_not_best(tmp_path):
    s = make(tmp_path)
    save(s, record(1, best=True))
    save(s, record(2, epoch_best=1))
    assert s.layout.read_pointer("last").epoch == 2
    assert s.layout.read_pointer("best").epoch == 1


def test_a_missing_best_is_pointed_back_at_the_recorded_best(tmp_path):
    s = make(tmp_path)
    save(s, record(1, best=True))
    s.layout.best.unlink()
    save(s, record(2, epoch_best=1))
    assert s.layout.read_pointer("best").epoch == 1
    s.layout.best.unlink()
    save(s, record(3, epoch_best=7))  # the recorded best is not on disk: no best link
    assert s.layout.read_pointer("best").kind == "missing"


def test_a_model_file_the_backend_did_not_write_fails_before_the_commit(tmp_path):
    s = make(tmp_path, backend=Backend(model_file="other.bin"))
    with pytest.raises(CheckpointWriteError, match="other.bin"):
        save(s, record(1))
    assert s.layout.read_pointer("last").kind == "missing"
    assert not s.layout.epoch_dir(1).exists() and not s.layout.work.exists()
    assert s.run_epochs == []


def test_a_non_os_error_in_the_backend_cleans_work_and_propagates(tmp_path):
    s = make(tmp_path)
    s.backend.fail = KeyError("boom")
    with pytest.raises(KeyError):
        save(s, record(1))
    assert not s.layout.work.exists() and s.layout.read_pointer("last").kind == "missing"


def test_an_os_error_becomes_a_write_error_keeping_its_errno(tmp_path):
    import errno

    s = make(tmp_path)
    s.backend.fail = OSError(errno.ENOSPC, "No space left", "/x")
    with pytest.raises(CheckpointWriteError) as err:
        save(s, record(4))
    assert err.value.errno == errno.ENOSPC and err.value.filename == "/x"
    assert "epoch 4" in str(err.value) and "untouched" in str(err.value)


def test_re_saving_an_epoch_keeps_it_once_in_the_runs_list(tmp_path):
    s = make(tmp_path)
    save(s, record(1))
    save(s, record(2))
    save(s, record(1))
    assert s.run_epochs == [2, 1]


def test_mid_epoch_checkpoints_are_superseded_by_any_later_one(tmp_path):
    s = make(tmp_path)
    save(s, record(1))
    save(s, record(1, batch=10))
    assert s.run_partials == [CkptKey(1, 10)] and s.run_epochs == [1]
    assert s.layout.read_pointer("last").key == CkptKey(1, 10)
    assert s.layout.read_pointer("best").kind == "missing"  # never best
    save(s, record(1, batch=10))  # the same one again: listed once
    assert s.run_partials == [CkptKey(1, 10)]
    save(s, record(1, batch=20))
    assert s.run_partials == [CkptKey(1, 20)]
    assert not s.layout.epoch_dir(1, 10).exists()
    save(s, record(2))
    assert s.run_partials == [] and not s.layout.epoch_dir(1, 20).exists()
    assert s.layout.complete_keys() == [CkptKey(1), CkptKey(2)]


def test_a_mid_epoch_checkpoint_that_best_names_is_not_deleted(tmp_path):
    s = make(tmp_path)
    save(s, record(1, batch=10))
    s.committer.point("best", 1, 10)
    save(s, record(1))
    assert s.layout.epoch_dir(1, 10).exists() and s.run_partials == [CkptKey(1, 10)]


def test_a_failing_supersession_is_retried(tmp_path, caplog):
    s = make(tmp_path, logger=logging.getLogger("sv"))
    save(s, record(1, batch=10))
    real = s.committer.delete_epoch
    calls = []

    def refuse(epoch, batch=0, background=False):
        calls.append((epoch, batch))
        raise PermissionError(13, "refused")

    s.committer.delete_epoch = refuse
    with caplog.at_level(logging.WARNING, logger="sv"):
        save(s, record(2))
    assert calls == [(1, 10)] and s.run_partials == [CkptKey(1, 10)]
    assert any("superseded 001+000010" in m for m in caplog.messages)
    s.committer.delete_epoch = real
    save(s, record(3))
    assert s.run_partials == [] and not s.layout.epoch_dir(1, 10).exists()


def test_the_keep_policy_deletes_old_epochs_but_never_last_best_or_resumed(tmp_path):
    s = make(tmp_path, KeepRule("linear", 1))
    save(s, record(1, best=True))
    s.resumed_from = 2
    save(s, record(2, epoch_best=1))
    save(s, record(3, epoch_best=1))
    save(s, record(4, epoch_best=1))
    assert s.layout.list_epochs() == [1, 2, 4]
    assert s.run_epochs == [1, 2, 4]
    assert s.protected() == {4, 1, 2}
    assert s.clean(4, 1) == (3, 0)


def test_delete_reports_false_and_keeps_the_epoch_listed_when_refused(tmp_path):
    s = make(tmp_path)
    save(s, record(1))
    save(s, record(2))

    def refuse(epoch, batch=0, background=False):
        raise PermissionError(13, "refused")

    real, s.committer.delete_epoch = s.committer.delete_epoch, refuse
    assert s.delete(1) is False and s.run_epochs == [1, 2]
    s.committer.delete_epoch = real
    assert s.delete(1) is True and s.run_epochs == [2]
    assert s.layout.list_epochs() == [2]


def test_the_save_is_logged_with_best_and_reason(tmp_path, caplog):
    s = make(tmp_path, logger=logging.getLogger("sv2"))
    with caplog.at_level(logging.INFO, logger="sv2"):
        save(s, record(1, best=True, reason="interval 1"))
        save(s, record(1, batch=5))
    assert any("epoch 1: saved" in m and "(best)" in m and "(interval 1)" in m
               for m in caplog.messages)
    assert any("epoch 1 + 5 batches (mid-epoch)" in m for m in caplog.messages)


def test_async_saver_commits_in_the_background_and_reports_at_wait(tmp_path):
    saver = make(tmp_path)
    a = AsyncSaver(saver, saver.log)
    assert a.wait() is None and a.pending is None
    rec = record(1)
    a.submit(rec, a.saver.backend.capture(False))
    assert a.pending is rec
    with pytest.raises(RuntimeError, match="in flight"):
        a.submit(record(2), {})
    assert a.wait() is rec and a.pending is None
    assert a.saver.layout.read_pointer("last").epoch == 1
    a.saver.backend.fail = ValueError("bad tensor")
    a.submit(record(2), {})
    with pytest.raises(CheckpointWriteError, match="background save of epoch 2") as err:
        a.wait()
    assert isinstance(err.value.__cause__, ValueError)
    assert err.value.errno == 0  # no OS errno to pass on
    assert a.wait() is None
    a.saver.backend.fail = CheckpointWriteError(5, "own error")
    a.submit(record(3), {})
    with pytest.raises(CheckpointWriteError, match="own error"):
        a.wait()
