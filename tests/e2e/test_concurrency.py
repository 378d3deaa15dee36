"""Two training processes on one ckpt_directory: the second is refused at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from candle_ckpt.storage.integrity import verify_checkpoint
from candle_ckpt.storage.layout import Layout
from tests.helpers.harness import TRAINER


@pytest.mark.parametrize("framework", ["files", "torch"])
def test_second_trainer_gets_locked_error_and_first_is_untouched(
    tmp_path: Path, framework: str
) -> None:
    run = tmp_path / "run"
    args = ["--framework", framework, "--dir", str(run), "--epochs", "30", "--size", "16"]
    first = subprocess.Popen([sys.executable, str(TRAINER), *args, "--log",
                              str(tmp_path / "a.log"), "--checksum", "--hold"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "ready"
        second = subprocess.run([sys.executable, str(TRAINER), *args, "--log",
                                 str(tmp_path / "b.log")],
                                capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode != 0
        assert "CheckpointLockedError" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert not (tmp_path / "b.log").exists() or "saving" not in (
            tmp_path / "b.log").read_text()
        assert first.stdin is not None
        first.stdin.write("go\n")
        first.stdin.close()
        assert first.wait(timeout=300) == 0, "the first run did not finish"
    finally:
        if first.poll() is None:
            first.kill()
    layout = Layout.ours(run)
    assert layout.read_pointer("last").epoch == 30
    for epoch in layout.complete_epochs():
        info = layout.read_info(epoch)
        assert verify_checkpoint(layout.epoch_dir(epoch), info, True) == []


def test_a_killed_trainers_lock_does_not_block_the_next(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, str(TRAINER), "--framework", "files", "--dir", str(run),
           "--epochs", "100000", "--size", "4", "--log", str(tmp_path / "a.log")]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None and first.stdout.readline().strip() == "ready"
    first.kill()
    first.wait()
    nxt = subprocess.run(cmd[:-4] + ["--epochs", "0", "--log", str(tmp_path / "b.log")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert nxt.returncode == 0, nxt.stderr
