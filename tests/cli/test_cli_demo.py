"""``candle-ckpt demo``: a real SIGKILL of a training child, restart, bit-exact result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import assert_one_line_error, list_json, run_cli


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_demo_kills_restarts_and_matches_a_straight_run(tmp_path: Path,
                                                       framework: str) -> None:
    pytest.importorskip(framework)
    proc = run_cli("demo", "--framework", framework, "--dir", tmp_path / "demo")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    out = proc.stdout
    assert "it died with signal 9" in out
    assert "restarted from" in out and "(epoch 3;" in out  # the engine's own log line
    assert "EPOCH  val_loss" in out  # the list table
    assert "resumed run == uninterrupted run, bit for bit" in out

    run = tmp_path / "demo" / "interrupted"
    data = list_json(run)
    assert [c["epoch"] for c in data["checkpoints"]] == list(range(1, 9))
    assert data["last"]["epoch"] == 8
    resumed = json.loads((tmp_path / "demo" / "interrupted-weights.json").read_text())
    straight = json.loads((tmp_path / "demo" / "straight-weights.json").read_text())
    assert resumed["resumed_from"] == 3 and straight["resumed_from"] is None
    assert resumed["tensors"] == straight["tensors"]
    assert run_cli("verify", run).returncode == 0
    # The demo's own directory stands for its run A; the commands accept it.
    assert list_json(tmp_path / "demo")["directory"] == str(run)
    assert "the equality does not" in out  # the digest varies by CPU; it says so
    # Each run's log holds what its child printed, stdout included, kill and restart.
    log = (tmp_path / "demo" / "interrupted.log").read_text()
    assert "epoch 1/8" in log and "SIGKILLed after epoch 3" in log and "restarted from" in log
    assert "epoch 8/8" in (tmp_path / "demo" / "straight.log").read_text()


def test_demo_reuses_its_own_directory_but_not_a_foreign_one(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    assert_one_line_error(run_cli("demo", "--dir", tmp_path), "not empty")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
