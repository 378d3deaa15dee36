"""Fixtures of the command-line tests (helpers live in cli_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import train  # noqa: E402


@pytest.fixture
def run6(tmp_path: Path) -> Path:
    """A run of 6 epochs with checksums; best is epoch 4, last epoch 6."""
    directory = tmp_path / "save"
    train(directory, 6, "--losses", "0.9,0.5,0.6,0.3,0.4,0.35")
    return directory
