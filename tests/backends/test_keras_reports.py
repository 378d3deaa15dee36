"""The older Keras pattern (module-level restart(), then the callback) reports one run."""

from __future__ import annotations

from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

import candle_ckpt as candle  # noqa: E402


def test_module_restart_then_callback_says_checkpointing_into_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = {"epochs": 2, "ckpt_directory": str(tmp_path / "save")}
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    J = candle.restart(g, model)
    assert J is None
    ckpt = candle.CandleCheckpointCallback(g)
    ckpt.close()
    out = capsys.readouterr().out
    assert out.count("checkpointing into") == 1, out
    assert "no checkpoint to restart from" in out  # restart() still says what it did


def test_an_original_model_h5_that_does_not_fit_raises_mismatch_and_changes_nothing(
        tmp_path: Path) -> None:
    """Legacy files get the same validate-then-apply as ours (weights, then optimizer)."""
    import shutil

    import numpy as np

    fixture = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "original-candle"
    if not fixture.is_dir():
        fixture = Path("/work/shared/fixtures/original-candle")
    root = tmp_path / "run"
    shutil.copytree(fixture / "keras", root)
    (root / "last").symlink_to(root / "epochs" / "006")  # absolute, as the original wrote
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(7),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(candle.CheckpointMismatchError, match="does not fit the model"):
        candle.restart({"epochs": 9, "ckpt_directory": str(root)}, model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
