"""commit: what the writer lock's errors tell the user (issue 17).

Errors say what was wrong and what to do (STYLE.md); these pin the advice, not the prose.
"""

from __future__ import annotations

import os

import pytest
from fshelpers import engine
from test_lock_and_log import start_holder

from candle_ckpt import CheckpointLockedError
from candle_ckpt.errors import LockLostError
from candle_ckpt.storage.lock import acquire_writer_lock


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
