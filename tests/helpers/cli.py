"""Run candle-ckpt and the test trainer in subprocesses, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TRAINER = HERE / "cli_trainer.py"
FIXTURES = HERE.resolve().parents[2] / "shared" / "fixtures" / "original-candle"
if not FIXTURES.is_dir():  # the shared fixtures do not move even if the tree does
    FIXTURES = Path("/work/shared/fixtures/original-candle")


def run_cli(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m candle_ckpt ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "candle_ckpt", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status 2, exactly one line on stderr naming ``words``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("candle-ckpt: error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def train(directory: Path, epochs: int, *extra: str) -> dict[str, Any]:
    """One run of the test trainer (restarts from ``directory`` if it holds a checkpoint)."""
    proc = subprocess.run([sys.executable, str(TRAINER), str(directory), str(epochs), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def list_json(directory: Path) -> dict[str, Any]:
    proc = run_cli("list", directory, "--json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
