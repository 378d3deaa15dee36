"""One writer per checkpoint directory (across processes), and ckpt.log without duplicates."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from candle_ckpt import CheckpointLockedError
from candle_ckpt.errors import LockLostError
from candle_ckpt.logs import CkptLog
from candle_ckpt.storage.lock import acquire_writer_lock
from candle_ckpt.testing import CandleCkptFiles
from tests.helpers.fs import blobs, ckpts, engine, train

HOLDER = textwrap.dedent("""
    import sys
    from candle_ckpt.testing import CandleCkptFiles
    e = CandleCkptFiles({"epochs": 3, "ckpt_directory": sys.argv[1]}, logger=None)
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the parent says so
    e.close()
    print("released", flush=True)
""")


def start_holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "locked", line
    return proc


def test_a_lock_held_by_another_process_refuses_a_second_writer(tmp_path):
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(CheckpointLockedError) as err:
            engine(tmp_path)
    finally:
        proc.communicate("go\n", timeout=60)
    assert isinstance(err.value, BlockingIOError)
    assert f"pid {proc.pid}" in str(err.value)
    assert str(tmp_path) in str(err.value)
    with engine(tmp_path) as e:  # released: the next writer gets it
        assert train(e, [1]) == [1]


def test_a_lock_of_a_killed_process_does_not_block(tmp_path):
    proc = start_holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with engine(tmp_path) as e:
        assert train(e, [1]) == [1]
        assert e.restart() is not None


def test_a_second_engine_in_the_same_process_is_refused(tmp_path):
    first = engine(tmp_path)
    try:
        with pytest.raises(CheckpointLockedError, match="already held by this process") as err:
            engine(tmp_path)
        assert f"pid {os.getpid()}" in str(err.value)
        assert train(first, [1]) == [1]  # the first writer is untouched
    finally:
        first.close()
    with engine(tmp_path) as second:  # released: the next engine gets it
        assert train(second, [2]) == [2]


def test_the_lock_is_released_when_the_engine_closes(tmp_path):
    first = engine(tmp_path)
    probe = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="",
                           capture_output=True, text=True, timeout=60, check=False)
    assert "CheckpointLockedError" in probe.stderr
    first.close()
    probe = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="",
                           capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["locked", "released"]


def test_each_message_is_logged_once_however_many_engines(tmp_path):
    first = engine(tmp_path)
    first.close()  # one writer at a time; its logger keeps working
    second = engine(tmp_path)
    third = engine(tmp_path / "other")
    try:
        first.info("message-from-first")
        second.info("message-from-second")
        third.info("message-from-third")
        train(second, [1])
    finally:
        for e in (first, second, third):
            e.close()
    log = (tmp_path / "ckpt.log").read_text(encoding="utf-8")
    assert log.count("message-from-first") == 1
    assert log.count("message-from-second") == 1
    assert "message-from-third" not in log
    assert log.count("epoch 1: saved") == 1
    assert (tmp_path / "other" / "ckpt.log").read_text().count("message-from-third") == 1


CONSOLE = textwrap.dedent("""
    import sys
    from candle_ckpt.testing import CandleCkptFiles
    params = {"epochs": 3, "ckpt_directory": sys.argv[1]}
    a = CandleCkptFiles(params)
    a.close()  # one writer per directory at a time; closed engines still log
    b = CandleCkptFiles(params)
    b.close()
    quiet = CandleCkptFiles(params, verbose=False)
    a.info("hello-console")
    b.info("hello-console")
    a.debug("debug-console")
    quiet.debug("debug-console")
    quiet.info("quiet-info")
""")


def test_the_console_prints_each_message_once_per_call(tmp_path):
    result = subprocess.run([sys.executable, "-c", CONSOLE, str(tmp_path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("hello-console") == 2
    assert result.stdout.count("checkpointing into") == 3  # info: verbose=False shows it too
    # debug lines only from the verbose engine: the quiet one does not silence it, nor
    # does the verbose one make the quiet one verbose
    assert result.stdout.count("debug-console") == 1
    assert result.stdout.count("quiet-info") == 1
    log = (tmp_path / "ckpt.log").read_text(encoding="utf-8")
    assert log.count("hello-console") == 2
    assert log.count("debug-console") == 2
    assert log.count("checkpointing into") == 3


@pytest.mark.parametrize("verbose", [False, True])
def test_a_rank_but_0_shows_warnings_alone_on_the_console(tmp_path, verbose):
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(f"rank1-{verbose}")
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    log = CkptLog(None, logger, verbose, warnings_only=True)
    log.info("an info line")
    log.debug("a debug line")
    log.checksummed(1 << 20, 0.5)
    log.warning("a warning")
    assert [r.getMessage() for r in records] == ["a warning"]
    shown = CkptLog(None, logger, verbose)
    shown.info("rank 0 info")
    assert records[-1].getMessage() == "rank 0 info"


def test_checksum_file_logs_the_originals_checksummed_line(tmp_path, caplog):
    import logging
    import re

    import candle_ckpt

    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * (3 << 20))
    line = r"checksummed: 3\.000 MB in \d+\.\d{3} seconds \(\d+\.\d{2} MB/s\)\."
    with caplog.at_level(logging.INFO, logger="user"):
        value = candle_ckpt.checksum_file(logging.getLogger("user"), data)
    assert [re.fullmatch(line, m) is not None for m in caplog.messages] == [True]
    with engine(tmp_path / "run") as e:
        assert e.checksum_file(data) == value
    assert re.search(r"INFO +" + line, (tmp_path / "run" / "ckpt.log").read_text())


def test_a_save_leaves_no_work_directory_and_a_later_engine_removes_a_stale_one(tmp_path):
    with engine(tmp_path) as e:
        train(e, [1])
    stale = ckpts(tmp_path) / "work"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"half")
    with engine(tmp_path) as e:
        assert not stale.exists()
        J = e.restart()
    assert J is not None and e.state == blobs(1)
    assert "stale work directory" in (tmp_path / "ckpt.log").read_text(encoding="utf-8")


def test_directories_whose_names_differ_only_by_dot_and_underscore_keep_separate_logs(tmp_path):
    with engine(tmp_path / "run.1") as dotted, engine(tmp_path / "run_1") as underscored:
        dotted.info("from-dotted")
        underscored.info("from-underscored")
    dotted_log = (tmp_path / "run.1" / "ckpt.log").read_text(encoding="utf-8")
    underscored_log = (tmp_path / "run_1" / "ckpt.log").read_text(encoding="utf-8")
    assert "from-dotted" in dotted_log and "from-underscored" not in dotted_log
    assert "from-underscored" in underscored_log and "from-dotted" not in underscored_log


def test_a_second_engine_in_the_process_is_refused_and_leaves_an_inflight_save_alone(
        tmp_path):
    from candle_ckpt.storage import fsio

    first = CandleCkptFiles({"epochs": 5, "ckpt_directory": str(tmp_path), "ckpt_async": True,
                             "ckpt_save_best_metric": "loss"}, logger=None)
    first.set_model({"model.bin": b"m" * 1000})
    reached = threading.Event()
    release = threading.Event()

    def hold(step: str) -> None:
        if step == "info-written" and threading.current_thread() is not threading.main_thread():
            reached.set()
            release.wait()

    fsio._on_step = hold
    try:
        first.ckpt_epoch(0, "-", 1.0)
        assert reached.wait(30)
        assert (tmp_path / "ckpts/work/ckpt-info.json").exists()
        with pytest.raises(CheckpointLockedError, match="already held by this process"):
            CandleCkptFiles({"epochs": 5, "ckpt_directory": str(tmp_path)}, logger=None)
        assert (tmp_path / "ckpts/work/ckpt-info.json").exists(), "recover() ran under a save"
        release.set()
        first.wait()
    finally:
        release.set()
        fsio._on_step = None
    first.close()
    assert os.readlink(tmp_path / "ckpts/last") == "epochs/001"


# The writer lock's errors say what was wrong and what to do: these pin the advice,
# not the prose.
def test_a_released_lock_tells_to_build_a_new_engine(tmp_path):
    lock = acquire_writer_lock(tmp_path)
    lock.release()
    with pytest.raises(LockLostError) as err:
        lock.check()
    assert "close() was called" in str(err.value) and "new engine" in str(err.value)


def test_a_holder_whose_lock_file_cannot_be_read_is_unknown(tmp_path, monkeypatch):
    proc = start_holder(tmp_path)
    try:
        real = os.pread

        def refuse(fd, n, offset):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "pread", refuse)
        with pytest.raises(CheckpointLockedError) as err:
            engine(tmp_path)
        monkeypatch.setattr(os, "pread", real)
    finally:
        proc.communicate("go\n", timeout=60)
    assert "(unknown)" in str(err.value) and f"pid {proc.pid}" not in str(err.value)
    assert "another ckpt_directory" in str(err.value)
