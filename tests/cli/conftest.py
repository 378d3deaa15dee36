"""Fixtures of the command-line tests (helpers live in tests/helpers/cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import train


@pytest.fixture
def run6(tmp_path: Path) -> Path:
    """A run of 6 epochs with checksums; best is epoch 4, last epoch 6."""
    directory = tmp_path / "save"
    train(directory, 6, "--losses", "0.9,0.5,0.6,0.3,0.4,0.35")
    return directory
