"""Helpers shared by the filesystem tests: parameters, blobs and a small training loop."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from candle_ckpt.testing import CandleCkptFiles


def make_params(directory: Path, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "epochs": 20,
        "ckpt_directory": str(directory),
        "ckpt_save_best_metric": "val_loss",
    }
    params.update(overrides)
    return params


def blobs(epoch: int, run: str = "a", sizes: tuple[int, ...] = (3000, 517)) -> dict[str, bytes]:
    """Distinct, recognisable files for (run, epoch): model.bin first, then extra.bin."""
    out = {}
    for i, (name, size) in enumerate(zip(("model.bin", "extra.bin"), sizes, strict=False)):
        seed = f"{run}:{epoch}:{i}:".encode()
        out[name] = (seed * (size // len(seed) + 1))[:size]
    return out


def engine(directory: Path, **overrides: Any) -> CandleCkptFiles:
    return CandleCkptFiles(make_params(directory, **overrides), logger=None)


def train(e: CandleCkptFiles, epochs: range | list[int], run: str = "a",
          metrics: dict[int, float] | None = None) -> list[int]:
    """Call ckpt_epoch for 1-based ``epochs``; returns those that were saved."""
    saved = []
    for epoch in epochs:
        e.set_model(blobs(epoch, run))
        metric = (metrics or {}).get(epoch, 1.0 / epoch)
        if e.ckpt_epoch(epoch - 1, "-", metric):
            saved.append(epoch)
    return saved


def ckpts(directory: Path) -> Path:
    return directory / "ckpts"


def link_target(path: Path) -> str:
    if path.is_symlink():
        return os.readlink(path)
    return path.read_text(encoding="utf-8").strip()


def info(directory: Path, epoch: int) -> dict[str, Any]:
    return json.loads((ckpts(directory) / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text(encoding="utf-8"))


def epoch_dirs(base: Path) -> list[str]:
    """The names in epochs/, but for checkpoints already unlisted by the keep policy
    (``.deleting-*``, whose files the engine's remover thread may still be removing)."""
    return sorted(p.name for p in (base / "epochs").iterdir()
                  if not p.name.startswith(".deleting-"))
