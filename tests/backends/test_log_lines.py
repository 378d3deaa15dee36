"""The original CANDLE's three log lines, through CandleCkptPyTorch and CandleCkptKeras.

``restarting from epoch: %i``, ``checksummed: ...`` and ``model wrote: ...`` are an
interface (workflow scripts and CANDLE's checkpoint/restart regression grep them): each
is checked on the console (bare, so a line starts with it) and in ckpt.log, with its
format, level and figures; and the console's verbosity follows the original's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import candle_ckpt as candle  # noqa: E402

NUMBER = r"\d+\.\d{3}"
CHECKSUMMED = rf"checksummed: ({NUMBER}) MB in {NUMBER} seconds \((\d+\.\d{{2}}) MB/s\)\."
MODEL_WROTE = rf"model wrote: ({NUMBER}) MB in ({NUMBER}) seconds \((\d+\.\d{{2}}) MB/s\)\."
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def train_torch(params: dict[str, Any], verbose: bool) -> None:
    """The CANDLE PyTorch pattern: restart, then ckpt_epoch after each epoch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = candle.CandleCkptPyTorch(params, verbose=verbose)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    for epoch in range(J["epoch"] if J else 0, params["epochs"]):
        ckpt.ckpt_epoch(epoch, 1.0 / (epoch + 1))  # a new best each epoch
    ckpt.close()


def train_keras(params: dict[str, Any], verbose: bool) -> None:
    """The CANDLE Keras pattern: restart, then fit with the callback from initial_epoch."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    ckpt = candle.CandleCkptKeras(params, verbose=verbose)
    ckpt.set_model(model)
    J = ckpt.restart(model)
    x = np.linspace(0, 1, 32, dtype="float32").reshape(8, 4)
    y = x[:, :2] * 2
    model.fit(x, y, epochs=params["epochs"], initial_epoch=J["epoch"] if J else 0,
              validation_data=(x, y), callbacks=[ckpt], verbose=0)


TRAINERS: dict[str, Callable[[dict[str, Any], bool], None]] = {
    "torch": train_torch, "keras": train_keras}


@pytest.fixture(params=sorted(TRAINERS))
def train(request: pytest.FixtureRequest) -> Callable[[dict[str, Any], bool], None]:
    return TRAINERS[request.param]


def params_for(root: Path, epochs: int, **extra: Any) -> dict[str, Any]:
    return {"epochs": epochs, "ckpt_directory": str(root), **extra}


def log_lines(root: Path) -> list[str]:
    return (root / "ckpt.log").read_text(encoding="utf-8").splitlines()


def full_matches(lines: list[str], pattern: str) -> list[re.Match[str]]:
    return [m for m in (re.fullmatch(pattern, line) for line in lines) if m is not None]


def in_log(level: str, pattern: str) -> str:
    """A ckpt.log line of ``level`` whose message is ``pattern``."""
    return rf"{STAMP} {level} +{pattern}"


def megabytes(root: Path, epoch: int) -> str:
    """The size of a checkpoint's files, as the original's lines print it."""
    info = json.loads((root / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text(encoding="utf-8"))
    return "%0.3f" % (sum(f["size"] for f in info["files"].values()) / (1024 * 1024))


def test_a_restart_prints_restarting_from_epoch_the_epochs_completed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], train: Any) -> None:
    train(params_for(tmp_path, 3), False)
    first = capsys.readouterr().out
    train(params_for(tmp_path, 5, ckpt_restart_mode="required"), False)
    out = capsys.readouterr().out.splitlines()

    assert "restarting" not in first
    assert out.count("restarting from epoch: 3") == 1, out  # bare: the line starts with it
    assert len(full_matches(log_lines(tmp_path), in_log("INFO", "restarting from epoch: 3"))) == 1
    assert "restarting from epoch: 5" not in "\n".join(log_lines(tmp_path))


def test_checksummed_is_printed_for_each_save_and_each_verified_restart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], train: Any) -> None:
    train(params_for(tmp_path, 2, ckpt_checksum=True), False)
    saves = full_matches(capsys.readouterr().out.splitlines(), CHECKSUMMED)
    assert [m[1] for m in saves] == [megabytes(tmp_path, 1), megabytes(tmp_path, 2)]

    train(params_for(tmp_path, 3, ckpt_checksum=True, ckpt_restart_mode="required"), False)
    out = capsys.readouterr().out.splitlines()
    restart = full_matches(out, CHECKSUMMED)
    # the restart verified epoch 2's files, then epoch 3 was saved
    assert [m[1] for m in restart] == [megabytes(tmp_path, 2), megabytes(tmp_path, 3)]
    assert out.index(restart[0][0]) < out.index("restarting from epoch: 2")
    assert len(full_matches(log_lines(tmp_path), in_log("INFO", CHECKSUMMED))) == 4


def test_no_checksum_no_checksummed_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], train: Any) -> None:
    train(params_for(tmp_path, 2, ckpt_checksum=False), True)
    train(params_for(tmp_path, 3, ckpt_checksum=False), True)
    assert "restarting from epoch: 2" in capsys.readouterr().out.splitlines()
    assert "checksummed" not in (tmp_path / "ckpt.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("verbose", [True, False])
def test_model_wrote_is_a_debug_line_of_each_save_shown_when_verbose(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], train: Any, verbose: bool) -> None:
    train(params_for(tmp_path, 3), verbose)
    out = capsys.readouterr().out.splitlines()

    logged = full_matches(log_lines(tmp_path), in_log("DEBUG", MODEL_WROTE))
    assert [m[1] for m in logged] == [megabytes(tmp_path, e) for e in (1, 2, 3)]
    shown = full_matches(out, MODEL_WROTE)
    assert len(shown) == (3 if verbose else 0), out
    # Supervisor's cp-leaveout scripts take lines that start with "model wrote:" and
    # read the rate as the eighth token without its "(".
    parsed = [float(line.split()[7][1:]) for line in out if line.startswith("model wrote:")]
    assert parsed == [float(m[3]) for m in shown]
    # the rest of the console follows the original too: info lines always, debug if verbose
    assert any(line.startswith("ckpt: checkpointing into") for line in out)  # info
    assert any(line.startswith("ckpt: epoch 1: saving") for line in out) == verbose  # debug


def test_restart_mode_off_says_nothing_of_restarting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], train: Any) -> None:
    train(params_for(tmp_path, 2, ckpt_checksum=True), True)
    before = len(log_lines(tmp_path))
    capsys.readouterr()
    train(params_for(tmp_path, 2, ckpt_restart_mode="off", ckpt_checksum=False), True)
    out = capsys.readouterr().out
    this_run = "\n".join(log_lines(tmp_path)[before:])

    assert "restarting" not in out and "restarting" not in this_run
    assert "checksummed:" not in out and "checksummed:" not in this_run
    assert "ckpt_restart_mode='off'" in this_run  # it does say what it did
