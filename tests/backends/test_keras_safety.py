"""Restart never executes code from a Keras checkpoint (Lambda layers, unsafe configs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import candle_ckpt as candle  # noqa: E402

MARKER_ENV = "CANDLE_CKPT_TEST_MARKER"


# A lambda *expression* is stored as marshalled bytecode in a legacy model.h5: rebuilding
# the model from that file runs it. It appends to the file named by the environment.
_PAYLOAD = f"lambda x: (open(__import__('os').environ['{MARKER_ENV}'], 'a').write('ran'), x)[1]"


def _original_checkpoint_with_lambda(root: Path) -> None:
    """An original-CANDLE checkpoint whose model.h5 holds a Lambda with live bytecode."""
    keras.utils.set_random_seed(3)
    evil = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                             keras.layers.Lambda(eval(_PAYLOAD)), keras.layers.Dense(1)])
    evil.compile(optimizer="adam", loss="mse")
    epoch_dir = root / "epochs" / "001"
    epoch_dir.mkdir(parents=True)
    evil.save(epoch_dir / "model.h5")
    (epoch_dir / "ckpt-info.json").write_text(json.dumps({
        "epoch": 1, "save_best_metric": "loss", "best_metric_last": 1.0,
        "model_file": "model.h5", "checksum": "__DISABLED__", "timestamp": "x",
        "time_elapsed": "__FIRST__", "metadata": None}))
    os.symlink(epoch_dir, root / "last")


def test_lambda_in_a_checkpoint_is_never_executed_by_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    run = tmp_path / "run"
    _original_checkpoint_with_lambda(run)
    marker.unlink(missing_ok=True)  # building the evil model called the Lambda once

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    J = candle.restart({"epochs": 3, "ckpt_directory": str(run),
                        "ckpt_save_best_metric": "loss"}, model)
    assert J is not None and J["epoch"] == 1
    assert not marker.exists(), "restart executed code stored in the checkpoint"
    # the weights did come from the file
    assert not np.allclose(model.get_weights()[0], 0)

    # The payload is live: rebuilding the model from the file with safe_mode off runs it.
    keras.saving.load_model(run / "epochs/001/model.h5", compile=False, safe_mode=False)
    assert marker.exists(), "the crafted payload was not live, so the test proved nothing"
