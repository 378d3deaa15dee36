"""saver: what fails before the commit point raises and changes nothing; after it, nothing
raises and nothing is undone (the best stays, deletions are retried). Also: where last and
best point, the run's bookkeeping, mid-epoch supersession, the keep policy, AsyncSaver."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import signal
import threading
import time
import weakref
from pathlib import Path

import pytest

from candle_ckpt import CheckpointWriteError, shutdown
from candle_ckpt.backends.base import Restored, Written
from candle_ckpt.logs import CkptLog
from candle_ckpt.record import SaveRecord
from candle_ckpt.saver import AsyncSaver, KeepRule, Saver
from candle_ckpt.storage import fsio, remover
from candle_ckpt.storage.commit import Committer
from candle_ckpt.storage.layout import CkptKey, Layout
from candle_ckpt.storage.sink import FileSink
from tests.helpers.fs import blobs, ckpts, engine, link_target, train


class FaultyBackend:
    """Writes two files; the second write can fail with any errno."""

    name = "faulty"

    def __init__(self, fail: int | None = None) -> None:
        self.fail = fail

    def capture(self, live: bool) -> dict[str, bytes]:
        return {"model.bin": b"m" * 100, "extra.bin": b"e" * 10}

    def write(self, snapshot: dict[str, bytes], sink: FileSink) -> Written:
        for i, (name, data) in enumerate(snapshot.items()):
            with sink.open(name) as f:
                if i == 1 and self.fail is not None:
                    f.write(data[:3])
                    raise OSError(self.fail, "injected")
                f.write(data)
        return Written("model.bin", {})

    def load(self, directory: Path, info: dict) -> Restored:
        return Restored(lambda: [])


def make_record(epoch: int, best: bool = False) -> SaveRecord:
    return SaveRecord(epoch=epoch, metric_value=1.0 / epoch, is_best=best,
                      best_metric_last=1.0 / epoch if best else None,
                      epoch_best=epoch if best else None, save_best_metric="val_loss",
                      best_mode="min", checksum_algorithm=None, metadata=None,
                      backend="faulty", time=0.0, time_previous=None)


KEEP_ALL = KeepRule("all", 10)


def make_saver(root: Path, backend: FaultyBackend, keep: KeepRule = KEEP_ALL):
    layout = Layout.ours(root)
    log = CkptLog(layout.log_file, None, False)
    return Saver(layout, Committer(layout, log.info), backend, log, keep)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EMFILE, errno.EDQUOT, errno.EIO])
def test_a_write_failure_raises_write_error_naming_the_epoch_and_leaves_last(tmp_path, code):
    saver = make_saver(tmp_path, FaultyBackend())
    saver.save(make_record(1), saver.backend.capture(False))
    saver.backend.fail = code
    with pytest.raises(CheckpointWriteError) as err:
        saver.save(make_record(2), saver.backend.capture(False))
    assert err.value.errno == code and "epoch 2" in str(err.value)
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001"
    assert not (ckpts(tmp_path) / "work").exists()
    assert not (ckpts(tmp_path) / "epochs" / "002").exists()


def test_a_failing_deletion_after_the_commit_point_is_logged_and_retried(tmp_path, caplog):
    saver = make_saver(tmp_path, FaultyBackend(), KeepRule("linear", 1))
    original = saver.committer.delete_epoch
    refused = []

    def busy(epoch: int, batch: int = 0, background: bool = False) -> None:
        if not refused:
            refused.append(epoch)
            raise OSError(errno.EBUSY, "Device or resource busy")
        original(epoch, batch, background)

    saver.committer.delete_epoch = busy  # type: ignore[method-assign]
    saver.save(make_record(1), saver.backend.capture(False))
    saver.save(make_record(2), saver.backend.capture(False))  # deleting 1 fails: no raise
    assert refused == [1]
    assert link_target(ckpts(tmp_path) / "last") == "epochs/002"
    assert (ckpts(tmp_path) / "epochs" / "001").is_dir()
    assert "could not delete epoch 1" in (tmp_path / "ckpt.log").read_text()
    saver.save(make_record(3), saver.backend.capture(False))  # retried: 1 and 2 go now
    assert Layout.ours(tmp_path).list_epochs() == [3]


def test_async_saver_reports_the_error_at_wait_and_commits_nothing(tmp_path):
    saver = make_saver(tmp_path, FaultyBackend(errno.ENOSPC))
    wrapper = AsyncSaver(saver, saver.log)
    wrapper.submit(make_record(1), saver.backend.capture(False))
    assert wrapper.pending is not None and wrapper.pending.epoch == 1
    with pytest.raises(CheckpointWriteError, match="epoch 1"):
        wrapper.wait()
    assert wrapper.pending is None and wrapper.wait() is None
    assert not (ckpts(tmp_path) / "last").exists()


def test_an_engine_error_after_the_commit_point_keeps_the_save_and_the_best(tmp_path):
    """Through the public API: deletions refused by the filesystem never raise out of
    ckpt_epoch, never move the best, and the real best is never deleted."""
    with engine(tmp_path, ckpt_keep_limit=1) as e:
        def refuse(epoch: int) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        e.committer.delete_epoch = refuse  # type: ignore[method-assign]
        assert train(e, [1, 2, 3], metrics={1: 0.5, 2: 0.2, 3: 0.9}) == [1, 2, 3]
        assert (e.best_metric_last, e.epoch_best) == (0.2, 2)
        assert link_target(ckpts(tmp_path) / "best") == "epochs/002"
        assert link_target(ckpts(tmp_path) / "last") == "epochs/003"
        J = e.restart()
    assert J is not None and J["epoch"] == 3 and e.state == blobs(3)


def test_a_failed_save_leaves_the_best_as_it_was(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1], metrics={1: 0.5})
        e.backend.state = {"model.bin": b"x"}
        original = e.committer.publish

        def full(epoch, work, batch=0):
            raise OSError(errno.ENOSPC, "No space left on device")

        e.committer.publish = full  # type: ignore[method-assign]
        with pytest.raises(CheckpointWriteError):
            e.ckpt_epoch(1, "-", 0.1)  # would be a new best
        assert (e.best_metric_last, e.epoch_best) == (0.5, 1)
        e.committer.publish = original  # type: ignore[method-assign]
        assert e.ckpt_epoch(1, "-", 0.3)  # still better than 0.5: a new best of epoch 2
        assert (e.best_metric_last, e.epoch_best) == (0.3, 2)


def test_a_log_that_cannot_be_written_never_fails_a_save(tmp_path, monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", False)  # no "Logging error" noise
    with engine(tmp_path) as e:
        train(e, [1])
        log = tmp_path / "ckpt.log"
        log.unlink()
        log.mkdir()  # appending now fails with IsADirectoryError
        e.set_model(blobs(2))
        assert e.ckpt_epoch(1, "-", 0.1)
    assert link_target(ckpts(tmp_path) / "last") == "epochs/002"


def test_the_keep_policy_unlists_at_once_and_removes_the_files_on_the_remover_thread(
        tmp_path, monkeypatch):
    """The training thread goes on once the old checkpoint is unlisted; its files are
    gone before the next save writes anything, and when the engine is closed."""
    saver = make_saver(tmp_path, FaultyBackend(), KeepRule("linear", 1))
    gate, removing = threading.Event(), []
    real = remover.rmtree

    def slow(path: Path) -> None:
        removing.append((path.name, threading.current_thread().name))
        assert gate.wait(10)
        real(path)

    monkeypatch.setattr(remover, "rmtree", slow)
    saver.save(make_record(1), saver.backend.capture(False))
    saver.save(make_record(2), saver.backend.capture(False))  # returns while 1 is removed
    epochs = ckpts(tmp_path) / "epochs"
    assert Layout.ours(tmp_path).list_epochs() == [2]  # unlisted before save returned
    deadline = time.monotonic() + 10
    while not removing and time.monotonic() < deadline:  # the thread may not be there yet
        time.sleep(0.01)
    assert [n for n, _ in removing] == [p.name for p in epochs.glob(".deleting-001.*")]
    assert removing[0][1] == "candle-ckpt-remove"
    done = threading.Thread(target=saver.save, args=(make_record(3),
                                                     saver.backend.capture(False)))
    done.start()
    done.join(0.5)
    assert done.is_alive() and not (epochs / "003").exists()  # waits for the space first
    gate.set()
    done.join(10)
    saver.finish_deletions()
    assert sorted(p.name for p in epochs.iterdir()) == ["003"]


def test_a_failure_on_the_remover_thread_is_logged_by_the_next_save_and_retried(
        tmp_path, monkeypatch):
    saver = make_saver(tmp_path, FaultyBackend(), KeepRule("linear", 1))
    real, refused = remover.rmtree, []

    def busy(path: Path) -> None:
        if path.name.startswith(".deleting-") and not refused:
            refused.append(path.name)
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path / ".nfs0001"))
        real(path)

    monkeypatch.setattr(remover, "rmtree", busy)
    saver.save(make_record(1), saver.backend.capture(False))
    saver.save(make_record(2), saver.backend.capture(False))
    saver.save(make_record(3), saver.backend.capture(False))
    log = (tmp_path / "ckpt.log").read_text()
    assert "epoch 1 is unlisted" in log and ".nfs0001" in log and "retried" in log
    saver.finish_deletions()
    epochs = ckpts(tmp_path) / "epochs"
    assert refused and sorted(p.name for p in epochs.iterdir()) == ["003"]


def test_closing_the_engine_waits_for_the_remover(tmp_path, monkeypatch):
    real = remover.rmtree

    def slow(path: Path) -> None:
        time.sleep(0.3)
        real(path)

    monkeypatch.setattr(remover, "rmtree", slow)
    with engine(tmp_path, ckpt_keep_limit=1, ckpt_save_best=False) as e:
        train(e, [1, 2])
    assert sorted(p.name for p in (ckpts(tmp_path) / "epochs").iterdir()) == ["002"]


def test_a_forked_child_does_not_wait_for_or_repeat_the_parents_removals(
        tmp_path, monkeypatch):
    """A DataLoader worker forked while the remover runs must not hang on its copy of
    the remover's state (or remove anything) if it ever closes its copy of the engine."""
    saver = make_saver(tmp_path, FaultyBackend(), KeepRule("linear", 1))
    gate, real = threading.Event(), remover.rmtree

    def slow(path: Path) -> None:
        assert gate.wait(10)
        real(path)

    monkeypatch.setattr(remover, "rmtree", slow)
    saver.save(make_record(1), saver.backend.capture(False))
    saver.save(make_record(2), saver.backend.capture(False))  # the remover waits on gate
    pid = os.fork()
    if pid == 0:  # the child: must return at once, with nothing to report
        signal.alarm(5)
        ok = saver.committer.remover.wait() == [] and not saver.committer.remover._todo
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    gate.set()
    saver.finish_deletions()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert sorted(p.name for p in (ckpts(tmp_path) / "epochs").iterdir()) == ["002"]


# ------------------------------------------------------- a background save at exit, SIGTERM
@pytest.fixture
def held(monkeypatch):
    """Holds background saves at their first step until ``held.set()``; os.kill recorded.

    SIGTERM is never really sent to the test process: ``kills`` lists what was.
    """
    gate = threading.Event()

    def hold(step: str) -> None:
        if step == "work-created" and threading.current_thread() is not threading.main_thread():
            assert gate.wait(30)

    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(fsio, "_on_step", hold)
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(shutdown, "_pending", None)
    monkeypatch.setattr(shutdown, "_reported", False)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gate.kills = kills  # type: ignore[attr-defined]
    yield gate
    gate.set()
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_a_background_save_is_delivered_once_the_save_is_committed(
        tmp_path, held):
    e = engine(tmp_path, ckpt_async=True)
    train(e, [1])
    assert signal.getsignal(signal.SIGTERM) is shutdown._on_sigterm
    signal.raise_signal(signal.SIGTERM)  # runs the handler: the save is held mid-way
    assert held.kills == [] and not (ckpts(tmp_path) / "last").exists()
    held.set()
    e.wait()  # the save ends, the signal is sent again; here it terminates
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001"
    assert (os.getpid(), signal.SIGTERM) in held.kills
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # so that the kill kills
    e.close()


def test_without_a_sigterm_the_default_disposition_is_back_once_the_save_is_done(
        tmp_path, held):
    held.set()
    with engine(tmp_path, ckpt_async=True) as e:
        train(e, [1])
        e.wait()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert held.kills == []


def test_a_sigterm_handler_of_the_user_is_left_alone_during_a_background_save(
        tmp_path, held):
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    with engine(tmp_path, ckpt_async=True) as e:
        train(e, [1])
        signal.raise_signal(signal.SIGTERM)
        held.set()
    assert received == [signal.SIGTERM] and held.kills == []
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001"


def test_pre_emption_installed_over_the_deferral_keeps_its_own_meaning_of_sigterm(
        tmp_path, held):
    """ckpt_signals' handler chains to the one it replaced: ours must then do nothing
    (the default disposition it stands for would not have run either)."""
    from candle_ckpt.preempt import SignalWatch

    with engine(tmp_path, ckpt_async=True) as e:
        train(e, [1])
        watch = SignalWatch((signal.SIGTERM,))
        watch.install()
        signal.raise_signal(signal.SIGTERM)
        assert watch.received == signal.SIGTERM and shutdown._pending is None
        watch.uninstall()
        held.set()
    assert held.kills == [] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_engine_can_be_collected_while_its_background_save_is_in_flight(tmp_path, held):
    e = engine(tmp_path, ckpt_async=True)
    train(e, [1])
    collected = weakref.ref(e)
    held.set()
    del e
    gc.collect()
    assert collected() is None
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001"


def test_a_collected_engine_prints_the_failure_of_its_background_save_on_stderr(
        tmp_path, held, monkeypatch, capsys):
    held.set()
    e = engine(tmp_path, ckpt_async=True)
    train(e, [1])
    e.wait()

    def full(step: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(fsio, "_on_step", full)
    e.set_model(blobs(2))
    e.ckpt_epoch(1, "-", 0.1)
    del e
    gc.collect()
    err = capsys.readouterr().err
    assert "candle-ckpt: " in err and "epoch 2" in err and "(injected)" in err
    assert shutdown._reported  # the exit status will be 1
    assert link_target(ckpts(tmp_path) / "last") == "epochs/001"


def test_a_forked_child_gets_the_default_sigterm_back_while_the_parent_saves(
        tmp_path, held):
    with engine(tmp_path, ckpt_async=True) as e:
        train(e, [1])
        pid = os.fork()
        if pid == 0:
            os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
                     and not shutdown._busy else 1)
        _, status = os.waitpid(pid, 0)
        held.set()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ------------------------------------------- links, bookkeeping, supersession, keep policy
class TwoFileBackend:
    """Writes model.bin and extra.bin (by stream or by path); can be told to fail."""

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


def make(root: Path, keep: KeepRule = KEEP_ALL, logger=None,
         backend: TwoFileBackend | None = None) -> Saver:
    layout = Layout.ours(root)
    log = CkptLog(layout.log_file, logger, False)
    return Saver(layout, Committer(layout, log.info), backend or TwoFileBackend(), log, keep)


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
    s = make(tmp_path, backend=TwoFileBackend(by_path=True))
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
    s = make(tmp_path, backend=TwoFileBackend(model_file="other.bin"))
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
