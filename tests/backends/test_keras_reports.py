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
