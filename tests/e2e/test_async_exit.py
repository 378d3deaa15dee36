"""A script that ends while a background (``ckpt_async``) save is in flight, without
``on_train_end`` or ``close``, never loses that checkpoint silently: interpreter exit
finishes and commits it, or prints its failure on stderr and exits with status 1; a
SIGTERM during the save lets it commit, then ends the process by SIGTERM.

The child (``exit_trainer.py``) holds the last save until the interpreter has begun to
exit, or until the SIGTERM was sent, so every test knows the save was in flight then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TRAINER = Path(__file__).parent / "exit_trainer.py"
MODULE = {"torch": "torch", "keras": "keras"}


def start(framework: str, scenario: str, tmp_path: Path) -> subprocess.Popen[str]:
    pytest.importorskip(MODULE[framework])
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, str(TRAINER), framework, scenario, str(tmp_path / "c"),
         str(tmp_path / "in-flight-at-exit")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)


def last(tmp_path: Path) -> str:
    return os.readlink(tmp_path / "c" / "ckpts" / "last")


def assert_epoch_3_verifies(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "candle_ckpt", "verify", str(tmp_path / "c"),
                           "3"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK      epoch 3"), proc.stdout


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_save_in_flight_when_the_script_returns_is_committed_before_the_process_exits(
        tmp_path: Path, framework: str) -> None:
    proc = start(framework, "exit", tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "in-flight-at-exit").exists()  # it went on after the script returned
    assert last(tmp_path) == "epochs/003"
    assert_epoch_3_verifies(tmp_path)
    assert "candle-ckpt:" not in err and "failed" not in out + err


def test_a_save_failing_after_the_script_returned_is_printed_on_stderr_with_exit_status_1(
        tmp_path: Path) -> None:
    proc = start("torch", "fail", tmp_path)
    out, err = proc.communicate(timeout=300)
    assert (tmp_path / "in-flight-at-exit").exists()
    assert proc.returncode == 1, (out, err[-3000:])
    message = [line for line in err.splitlines() if line.startswith("candle-ckpt: ")]
    assert len(message) == 1, err[-3000:]
    assert "at interpreter exit" in message[0] and "epoch 3" in message[0]
    assert "No space left on device (injected)" in message[0]
    assert last(tmp_path) == "epochs/002"  # untouched, and still a valid checkpoint
    assert not (tmp_path / "c" / "ckpts" / "epochs" / "003").exists()


@pytest.mark.parametrize(("framework", "scenario"), [
    ("torch", "sigterm-exit"), ("torch", "sigterm-training"), ("keras", "sigterm-exit")])
def test_sigterm_during_a_background_save_lets_it_commit_then_ends_the_process_by_sigterm(
        tmp_path: Path, framework: str, scenario: str) -> None:
    proc = start(framework, scenario, tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == "saving 3":
                break
        else:
            pytest.fail(f"the child never saved epoch 3: {proc.communicate()[1][-3000:]}")
        os.kill(proc.pid, signal.SIGTERM)  # while the save is held mid-way
        try:
            proc.stdin.write("\n")  # let it go on
            proc.stdin.flush()
        except BrokenPipeError:  # killed at once: what the assertions below catch
            pass
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, out, err[-3000:])
    assert "still alive" not in out
    assert last(tmp_path) == "epochs/003"
    assert_epoch_3_verifies(tmp_path)
