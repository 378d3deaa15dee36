"""The scripts in examples/, which the user guide shows, run as a user runs them: each
checkpoints on small data, and a second run resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SRC = ROOT / "src"


def environ(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no SLURM job, this checkout's candle_ckpt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}",
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    env.update(extra)
    return env


# torch's gloo backend sometimes aborts a process during interpreter finalization, after
# destroy_process_group() and after the script's last line (a minimal DDP script without
# candle_ckpt does it too, about one run in six on this torch): torchrun then exits 1.
GLOO_EXIT_ABORT = "terminate called without an active exception"


def run(args: list[str], env: dict[str, str] | None = None,
        timeout: float = 180, finished_marker: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a script to its end. With ``finished_marker`` (rank 0's end report: the other
    ranks print no info lines), an exit status from gloo's abort at interpreter exit is
    accepted once it was printed, once (the work is done; what it wrote is checked by
    the caller)."""
    proc = subprocess.run(args, env=env or environ(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    exit_abort = (finished_marker is not None and GLOO_EXIT_ABORT in proc.stdout
                  and proc.stdout.count(finished_marker) == 1)
    assert proc.returncode == 0 or exit_abort, \
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}"
    return proc


def last(ckpt_dir: Path) -> str:
    return os.readlink(ckpt_dir / "ckpts" / "last")


def info(ckpt_dir: Path, name: str) -> dict:
    return json.loads((ckpt_dir / "ckpts" / name / "ckpt-info.json").read_text())


def assert_trains_then_resumes(script: list[str], ckpt_dir: Path, files: set[str],
                               env: dict[str, str] | None = None, ranks: int = 1) -> None:
    marker = "checkpoints written this run" if ranks > 1 else None
    first = run([*script, "--epochs", "2", "--ckpt_directory", str(ckpt_dir)], env,
                finished_marker=marker)
    assert first.stdout.count("no checkpoint to restart from") == 1  # rank 0 alone says it
    assert first.stdout.count("checkpoints written this run") == 1
    assert last(ckpt_dir) == "epochs/002"
    assert files <= {p.name for p in (ckpt_dir / "ckpts" / "epochs" / "002").iterdir()}

    second = run([*script, "--epochs", "3", "--ckpt_directory", str(ckpt_dir)], env,
                 finished_marker=marker)
    assert f"restarted from {ckpt_dir}/ckpts/epochs/002 (epoch 2" in second.stdout
    assert last(ckpt_dir) == "epochs/003"
    assert info(ckpt_dir, "last")["epoch"] == 3
    assert sorted(p.name for p in (ckpt_dir / "ckpts" / "epochs").iterdir()) == \
        ["001", "002", "003"]


def test_pytorch_example_checkpoints_and_a_second_run_resumes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    assert_trains_then_resumes([sys.executable, str(EXAMPLES / "pytorch_train.py")],
                               tmp_path / "ckpt", {"model.pt", "ckpt-info.json"})


def test_keras_example_checkpoints_and_a_second_run_resumes(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    assert_trains_then_resumes([sys.executable, str(EXAMPLES / "keras_fit.py")],
                               tmp_path / "ckpt",
                               {"model.weights.h5", "rng-state.json", "ckpt-info.json"},
                               environ(KERAS_BACKEND="tensorflow"))


def test_keras_preemption_example_stops_mid_epoch_and_the_next_run_continues_there(
        tmp_path: Path) -> None:
    pytest.importorskip("keras")
    ckpt_dir = tmp_path / "ckpt"
    script = [sys.executable, str(EXAMPLES / "keras_preempt.py"), "--epochs", "2",
              "--ckpt_directory", str(ckpt_dir)]
    env = environ(KERAS_BACKEND="tensorflow")
    proc = subprocess.Popen(script, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # Keras prints "Epoch 2/2" as epoch 2 begins
        lines.append(line)
        if line.startswith("Epoch 2/"):
            proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=180) == 0, "".join(lines)
    assert last(ckpt_dir).startswith("epochs/001+"), "".join(lines)
    done = int(last(ckpt_dir).split("+")[1])

    second = run(script, env)
    assert f"resuming epoch 2 at batch {done + 1} of 1250" in second.stdout
    assert "ran out of data" not in second.stdout
    assert last(ckpt_dir) == "epochs/002"


def test_ddp_example_under_torchrun_checkpoints_once_and_both_ranks_resume(
        tmp_path: Path) -> None:
    pytest.importorskip("torch")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", str(EXAMPLES / "pytorch_ddp.py")]
    ckpt_dir = tmp_path / "ckpt"
    assert_trains_then_resumes(torchrun, ckpt_dir,
                               {"model.pt", "rng-rank-00000.pt", "rng-rank-00001.pt"},
                               ranks=2)
    assert info(ckpt_dir, "last")["world_size"] == 2
    log = (ckpt_dir / "ckpt.log").read_text()
    assert "rank 0 of 2" in log


def fake_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for SLURM's scontrol that records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    return bin_dir, calls


def test_slurm_batch_script_is_valid_bash_and_asks_for_the_signal_and_requeue() -> None:
    sbatch = EXAMPLES / "slurm" / "train.sbatch"
    subprocess.run(["bash", "-n", str(sbatch)], check=True)
    text = sbatch.read_text()
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
    assert 'exec python "${SLURM_SUBMIT_DIR:-.}/train.py"' in text
    assert (EXAMPLES / "slurm" / "train.py").is_file()


def test_slurm_example_saves_mid_epoch_on_sigusr1_requeues_and_the_requeued_run_resumes(
        tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if shutil.which("sh") is None:
        pytest.skip("no /bin/sh for the scontrol stand-in")
    bin_dir, calls = fake_scontrol(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    script = [sys.executable, str(EXAMPLES / "slurm" / "train.py"),
              "--ckpt_directory", str(ckpt_dir)]
    env = environ(SLURM_JOB_ID="4242", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    # So many epochs that only the signal, sent once epoch 1 is reported, ends the run.
    proc = subprocess.Popen([*script, "--epochs", "1000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch 1/1000"):
                proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert "installed handlers for SIGUSR1, SIGTERM" in output
    assert "received SIGUSR1: saved a mid-epoch checkpoint" in output
    assert calls.read_text() == "requeue 4242\n"
    stopped = info(ckpt_dir, "last")
    assert stopped["partial"] is True and stopped["batch"] > 0
    assert last(ckpt_dir) == f"epochs/{stopped['epoch']:03d}+{stopped['batch']:06d}"

    # The requeued job: the same command, the same job ID; it resumes at that batch.
    epochs = stopped["epoch"] + 1
    resumed = run([*script, "--epochs", str(epochs)],
                  {**env, "SLURM_RESTART_COUNT": "1"})
    assert (f"restarted from {ckpt_dir}/ckpts/epochs/{stopped['epoch']:03d}"
            f"+{stopped['batch']:06d}") in resumed.stdout
    assert (f"batches: epoch {epochs} resumed after batch {stopped['batch']}"
            in resumed.stdout)  # the rest of the interrupted epoch, in its order
    assert last(ckpt_dir) == f"epochs/{epochs:03d}"
    assert info(ckpt_dir, "last")["partial"] is False
    assert calls.read_text() == "requeue 4242\n"  # a run that finishes is not requeued


def test_finetune_example_stores_the_backbone_once_resumes_and_exports(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    script = [sys.executable, str(EXAMPLES / "pytorch_finetune.py")]
    ckpt_dir = tmp_path / "ckpt"
    assert_trains_then_resumes(script, ckpt_dir, {"model.pt", "ckpt-info.json"})
    objects = [set(info(ckpt_dir, f"epochs/{e:03d}")["objects"]) for e in (1, 2, 3)]
    shared = set.intersection(*objects)
    assert len(shared) == 2  # the backbone's two weight matrices, stored once
    # the head and Adam's two moments of it change every epoch
    assert all(len(a - b) == 3 for a, b in zip(objects, objects[1:], strict=False))
    out = tmp_path / "final.pt"
    run([*script, "--epochs", "3", "--ckpt_directory", str(ckpt_dir), "--export", str(out)])
    state = torch.load(out, weights_only=True)
    assert state["epoch"] == 3 and "object_refs" not in state
