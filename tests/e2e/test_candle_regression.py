"""CANDLE's checkpoint/restart regression (ECP-CANDLE/Tests ``cr-1.sh``), run as written.

Four runs of a benchmark script in one directory, each a new process, with the flags of
``cr-1.sh``; what it greps in each run's output (stdout and stderr together, as its
``|& tee``) is asserted here, and so is its count of model files after run 4. The
script's ``rm -rfv runs/cr-$TOKEN-1/save/ckpts/epochs`` before run 4 names a path below
the run directory it has already entered, so it removes nothing: run 4 starts over the
checkpoints of runs 1 to 3, as here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"
MODEL_FILE = {"keras": "*.h5", "torch": "*.pt"}  # cr-1.sh counts '*.h5' (Keras)


def epoch_line(framework: str, epochs: int) -> str:
    """What ``check-epoch.sh`` looks for: Keras's "Epoch N/N", P1B1's 0-based epoch."""
    return f"Epoch {epochs}/{epochs}" if framework == "keras" else \
        f"Epoch: {epochs - 1} Average"


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_the_candle_checkpoint_restart_regression_passes(tmp_path: Path,
                                                         framework: str) -> None:
    pytest.importorskip(framework)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*flags: str) -> str:
        done = subprocess.run([sys.executable, str(HERE / f"benchmark_{framework}.py"), *flags],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout[-3000:]
        return done.stdout

    # 1: fresh run with checksums
    out = run("--epochs", "3", "--ckpt_checksum", "True", "--ckpt_save_interval", "1")
    assert epoch_line(framework, 3) in out
    assert "checksummed:" in out

    # 2: restart run with checksums
    out = run("--epochs", "5", "--ckpt_checksum", "True", "--ckpt_save_interval", "1",
              "--ckpt_restart_mode", "required")
    assert "restarting from epoch: 3" in out
    assert epoch_line(framework, 5) in out
    assert "checksummed:" in out
    assert epoch_line(framework, 3) not in out  # it did resume, not start over

    # 3: fresh run without restart or checksums
    out = run("--epochs", "3", "--ckpt_restart_mode", "off", "--ckpt_checksum", "False")
    assert "restarting" not in out
    assert "checksummed:" not in out
    assert epoch_line(framework, 3) in out

    # 4: fresh run, one checkpoint kept
    out = run("--epochs", "10", "--ckpt_restart_mode", "off", "--ckpt_keep_limit", "1",
              "--ckpt_save_interval", "1", "--ckpt_save_best", "False",
              "--ckpt_checksum", "False")
    assert "restarting:" not in out
    assert "checksummed:" not in out
    assert epoch_line(framework, 10) in out
    save = tmp_path / "save"
    assert [p.relative_to(save) for p in save.rglob(MODEL_FILE[framework])] == [
        Path("ckpts/epochs/010") / ("model.weights.h5" if framework == "keras" else "model.pt")]
    assert sorted(p.name for p in (save / "ckpts" / "epochs").iterdir()) == ["010"]
    assert os.readlink(save / "ckpts" / "last") == "epochs/010"
