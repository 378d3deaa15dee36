"""CandleCkptKeras under tf.distribute.MirroredStrategy (two logical CPU devices): one
model file per checkpoint, restart inside the strategy scope, bit-identical resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

SCRIPT = Path(__file__).with_name("keras_mirrored_script.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_mirrored_strategy_kill_and_restart_in_scope_is_bit_identical(tmp_path: Path) -> None:
    straight = run(str(tmp_path / "straight"), str(tmp_path / "straight.npy"), "--epochs", "3")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run(str(tmp_path / "ckpt"), str(tmp_path / "unused.npy"), "--epochs", "3",
                 "--exit-after", "2")
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not (tmp_path / "unused.npy").exists()
    resumed = run(str(tmp_path / "ckpt"), str(tmp_path / "resumed.npy"), "--epochs", "3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "initial_epoch=2" in resumed.stdout
    assert np.array_equal(np.load(tmp_path / "straight.npy"), np.load(tmp_path / "resumed.npy"))
    # Saved once, not once per replica: one model file in each checkpoint.
    for directory in sorted((tmp_path / "ckpt" / "ckpts" / "epochs").iterdir()):
        assert sorted(p.name for p in directory.iterdir()) == [
            "ckpt-info.json", "model.weights.h5", "rng-state.json"]
