"""User metadata strings cannot break ckpt-info.json, which stays strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from candle_ckpt.testing import CandleCkptFiles

NASTY = [
    'job "42"}, "epoch": 999, "x": {',
    "line one\nline two\r\n\ttabbed",
    "unicode: \u00e9\u4e2d\u6587 \U0001f680 and a lone backslash \\",
    "\x00\x1f control characters",
    "NaN Infinity -Infinity",
    "",
]


@pytest.mark.parametrize("metadata", NASTY)
def test_metadata_round_trips_through_strict_json(tmp_path: Path, metadata: str) -> None:
    ckpt = CandleCkptFiles({"epochs": 2, "ckpt_directory": str(tmp_path),
                            "ckpt_metadata": metadata, "ckpt_save_best_metric": "loss"},
                           logger=None)
    ckpt.set_model({"model.bin": b"w"})
    ckpt.ckpt_epoch(0, "-", float("nan"))  # a NaN metric must not produce NaN in JSON
    ckpt.close()
    text = (tmp_path / "ckpts/last/ckpt-info.json").read_text(encoding="utf-8")

    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    info = json.loads(text, parse_constant=refuse)
    assert info["metadata"] == metadata
    assert info["epoch"] == 1
    assert info["metric_value"] is None


def test_older_metadata_key_is_accepted(tmp_path: Path) -> None:
    ckpt = CandleCkptFiles({"epochs": 2, "ckpt_directory": str(tmp_path),
                            "metadata": "slurm 1234"}, logger=None)
    ckpt.set_model({"model.bin": b"w"})
    ckpt.ckpt_epoch(1, "-", 0.1)
    ckpt.close()
    info = json.loads((tmp_path / "ckpts/last/ckpt-info.json").read_text())
    assert info["metadata"] == "slurm 1234"
