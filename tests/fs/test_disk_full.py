"""Disk full: a failed save raises a clear error and loses nothing already committed."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import candle_ckpt
from candle_ckpt.storage import fsio
from candle_ckpt.testing import CandleCkptFiles


def _engine(directory: Path, **extra: object) -> CandleCkptFiles:
    g = {"epochs": 10, "ckpt_directory": str(directory), "ckpt_save_best_metric": "loss",
         "ckpt_checksum": True}
    g.update(extra)
    return CandleCkptFiles(g, logger=None)


def _assert_intact(directory: Path, epoch: int, state: dict[str, bytes]) -> None:
    layout = directory / "ckpts"
    assert os.readlink(layout / "last") == f"epochs/{epoch:03d}"
    assert not (layout / "work").exists(), "a half-written checkpoint was left behind"
    fresh = _engine(directory)
    J = fresh.restart(None)
    assert J is not None and J["epoch"] == epoch and J["skipped"] == []
    assert fresh.state == state
    fresh.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs where the machine lets us mount one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_save_on_a_full_real_filesystem_raises_and_keeps_last(small_fs: Path) -> None:
    ckpt = _engine(small_fs / "save")
    good = {"model.bin": b"a" * 300_000}
    ckpt.set_model(good)
    assert ckpt.ckpt_epoch(0, "-", 1.0)
    ckpt.set_model({"model.bin": b"b" * 900_000})  # cannot fit beside epoch 1
    with pytest.raises(candle_ckpt.CheckpointWriteError) as info:
        ckpt.ckpt_epoch(1, "-", 0.5)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "epoch 2" in str(info.value) and "untouched" in str(info.value)
    ckpt.close()
    _assert_intact(small_fs / "save", 1, good)
    # The space of the failed attempt was freed: a save that fits succeeds.
    ckpt = _engine(small_fs / "save")
    ckpt.restart(None)
    ckpt.set_model({"model.bin": b"c" * 300_000})
    assert ckpt.ckpt_epoch(1, "-", 0.5)
    ckpt.close()
    _assert_intact(small_fs / "save", 2, {"model.bin": b"c" * 300_000})


@pytest.mark.parametrize("step", ["work-created", "file-written", "info-written", "renamed"])
@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_enospc_at_each_write_step_raises_and_keeps_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, async_: bool
) -> None:
    ckpt = _engine(tmp_path, ckpt_async=async_)
    good = {"model.bin": b"a" * 5000, "opt.bin": b"o" * 100}
    ckpt.set_model(good)
    ckpt.ckpt_epoch(0, "-", 1.0)
    ckpt.wait()

    def full(name: str) -> None:
        if name == step:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_on_step", full)
    ckpt.set_model({"model.bin": b"b" * 5000, "opt.bin": b"p" * 100})
    with pytest.raises(candle_ckpt.CheckpointWriteError, match="No space left"):
        ckpt.ckpt_epoch(1, "-", 0.5)
        ckpt.wait()  # async: the failure surfaces at the next call into the engine
    monkeypatch.setattr(fsio, "_on_step", None)
    # The best metric was not advanced by the failed save.
    assert ckpt.epoch_best == 1 and ckpt.best_metric_last == 1.0
    ckpt.close()
    _assert_intact(tmp_path, 1, good)
