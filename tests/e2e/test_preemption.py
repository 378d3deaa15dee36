"""Pre-emption with real subprocesses and real signals: a torch loop with ckpt_batch and
a Keras fit are signalled mid-epoch, commit a mid-epoch checkpoint at the next batch,
exit on their own, and the restarted run resumes from exactly that state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.signals import drive

HERE = Path(__file__).parent
TRAINER = HERE / "preempt_trainer.py"


def start(framework: str, mode: str, ckpt_dir: Path, out: Path, *extra: str,
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environ = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                   CUDA_VISIBLE_DEVICES="", **(env or {}))
    return subprocess.Popen([sys.executable, str(TRAINER), framework, mode, str(ckpt_dir),
                             str(out), *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


CASES = [
    ("torch", signal.SIGUSR1, False),
    ("torch", signal.SIGTERM, True),
    ("keras", signal.SIGUSR1, False),
    ("keras", signal.SIGTERM, True),
]


@pytest.mark.parametrize(("framework", "sig", "async_save"), CASES,
                         ids=[f"{f}-{s.name}-{'async' if a else 'sync'}" for f, s, a in CASES])
def test_a_signal_mid_epoch_saves_at_the_next_batch_and_the_restart_resumes_there(
        tmp_path: Path, framework: str, sig: signal.Signals, async_save: bool) -> None:
    pytest.importorskip(framework)
    extra = ["--async-save"] if async_save else []
    ckpt_dir, out = tmp_path / "c", tmp_path / "train.json"
    proc = start(framework, "train", ckpt_dir, out, *extra)
    seconds = drive(proc, "batch 1 2", [sig])
    assert proc.returncode == 0, proc.stderr.read()[-3000:] if proc.stderr else ""
    assert seconds < 30
    trained = read(out)
    if framework == "torch":
        assert trained["stopped"] == [1, 4]  # signalled after batch index 2: saved after 3
    else:
        assert trained["stopped"] is True
    assert trained["handler_after"] == str(signal.SIG_DFL)  # restored after training
    last = os.readlink(ckpt_dir / "ckpts" / "last")
    assert last.startswith("epochs/001+"), last
    info = json.loads((ckpt_dir / "ckpts" / last / "ckpt-info.json").read_text())
    assert info["partial"] is True and info["epoch"] == 1

    resumed = start(framework, "resume", ckpt_dir, tmp_path / "resume.json", *extra)
    resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    result = read(tmp_path / "resume.json")
    assert result["J"] == {"epoch": 1, "batch": info["batch"]}
    if framework == "torch":
        assert info["batch"] == 4
    else:
        # Keras: our callback runs after the handshake callback, so the signal is seen at
        # batch 3, or at 4 when it reaches the process only after that callback (a loaded
        # machine); either way nothing trained before the stop is lost (checked below).
        assert info["batch"] in (3, 4)
    assert result["weights"] == trained["weights"]  # nothing trained before the stop lost


def test_two_signals_at_once_save_once_and_stop(
        tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "c", tmp_path / "train.json"
    proc = start("torch", "train", ckpt_dir, out)
    # Two signals at once, right after epoch 0's checkpoint (saved during the handshakes).
    drive(proc, "batch 0 7", [signal.SIGUSR1, signal.SIGTERM])
    assert proc.returncode == 0
    assert read(out)["stopped"] == [1, 1]
    epochs = sorted(os.listdir(ckpt_dir / "ckpts" / "epochs"))
    assert epochs == ["001", "001+000001"]


def test_a_signal_before_the_first_batch_saves_after_it(tmp_path: Path) -> None:
    ckpt_dir, out = tmp_path / "c", tmp_path / "train.json"
    proc = start("torch", "train", ckpt_dir, out)
    drive(proc, "ready", [signal.SIGUSR1])
    assert proc.returncode == 0
    assert read(out)["stopped"] == [0, 1]
    assert os.readlink(ckpt_dir / "ckpts" / "last") == "epochs/000+000001"


def test_sigusr1_under_slurm_requeues_the_job_with_scontrol(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls"
    fake = bin_dir / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ckpt_dir, out = tmp_path / "c", tmp_path / "train.json"
    proc = start("torch", "train", ckpt_dir, out, env=env)
    drive(proc, "batch 0 3", [signal.SIGUSR1])
    assert proc.returncode == 0
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "requeued SLURM job 4242" in (ckpt_dir / "ckpt.log").read_text()
