"""A training run for the kill harness: checkpoints every epoch and logs what it saved.

It appends fsync'd lines to ``--log``:
    restart R DIGEST   after restart: resumed at epoch R with weights DIGEST
    saving N DIGEST    about to checkpoint epoch N whose weights are DIGEST
    saved N            ckpt_epoch for epoch N returned
    done               the run finished
and prints "ready" on stdout once restarted, so the harness kills it only while it trains.
Training is deterministic, so DIGEST of the weights saved at epoch N is known in advance.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any


class FilesTrainer:
    """No framework: the "weights" are a large deterministic blob per epoch."""

    def __init__(self, g: dict[str, Any], size: int) -> None:
        from candle_ckpt.testing import CandleCkptFiles

        self.size = size
        self.ckpt = CandleCkptFiles(g, logger=None)
        self.state = {"model.bin": self._blob(0), "optimizer.bin": self._blob(-1)[: size // 4]}
        self.ckpt.set_model(self.state)

    def _blob(self, epoch: int) -> bytes:
        seed = hashlib.sha256(str(epoch).encode()).digest()
        return (seed * (self.size // len(seed) + 1))[: self.size]

    def restart(self) -> int:
        J = self.ckpt.restart(None)
        if J is None:
            return 0
        self.state = dict(self.ckpt.state)
        return int(J["epoch"])

    def train_epoch(self, epoch: int) -> float:
        self.state = {"model.bin": self._blob(epoch + 1), "optimizer.bin": self.state[
            "optimizer.bin"]}
        self.ckpt.set_model(self.state)
        return 1.0 / (epoch + 1)

    def digest(self) -> str:
        return hashlib.sha256(self.state["model.bin"]).hexdigest()[:16]

    def save(self, epoch: int, loss: float) -> None:
        self.ckpt.ckpt_epoch(epoch, "-", loss)

    def finish(self) -> None:
        self.ckpt.on_train_end()


class TorchTrainer:
    def __init__(self, g: dict[str, Any], width: int) -> None:
        import torch

        import candle_ckpt as candle

        torch.manual_seed(0)
        self.torch = torch
        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(width, 1))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 64, generator=gen)
        self.y = torch.randn(32, 1, generator=gen)
        self.ckpt = candle.CandleCkptPyTorch(g, logger=None)
        self.ckpt.set_model({"model": self.model, "optimizer": self.opt})

    def restart(self) -> int:
        J = self.ckpt.restart(self.model)
        return 0 if J is None else int(J["epoch"])

    def train_epoch(self, epoch: int) -> float:
        self.opt.zero_grad()
        loss = ((self.model(self.x) - self.y) ** 2).mean()
        loss.backward()
        self.opt.step()
        return float(loss)

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in self.model.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, epoch: int, loss: float) -> None:
        self.ckpt.ckpt_epoch(epoch, loss)

    def finish(self) -> None:
        self.ckpt.on_train_end()


class KerasTrainer:
    def __init__(self, g: dict[str, Any], width: int) -> None:
        import keras
        import numpy as np

        import candle_ckpt as candle

        keras.utils.set_random_seed(0)
        self.model = keras.Sequential([
            keras.Input((64,)), keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(1)])
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        rng = np.random.default_rng(1)
        self.x = rng.standard_normal((32, 64)).astype("float32")
        self.y = rng.standard_normal((32, 1)).astype("float32")
        self.ckpt = candle.CandleCkptKeras(g, logger=None)
        self.ckpt.set_model(self.model)

    def restart(self) -> int:
        J = self.ckpt.restart(self.model)
        return 0 if J is None else int(J["epoch"])

    def train_epoch(self, epoch: int) -> float:
        return float(self.model.train_on_batch(self.x, self.y))

    def digest(self) -> str:
        h = hashlib.sha256()
        for w in self.model.get_weights():
            h.update(w.tobytes())
        return h.hexdigest()[:16]

    def save(self, epoch: int, loss: float) -> None:
        self.ckpt.ckpt_epoch(epoch, "-", loss)

    def finish(self) -> None:
        self.ckpt.on_train_end()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=["files", "torch", "keras"], default="files")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512, help="files: MiB/64; others: width")
    ap.add_argument("--async", dest="async_", action="store_true")
    ap.add_argument("--checksum", action="store_true")
    ap.add_argument("--dedup", action="store_true", help="ckpt_dedup (shared objects)")
    ap.add_argument("--hold", action="store_true",
                    help="after 'ready', wait for a line on stdin before training")
    args = ap.parse_args(argv)
    g = {
        "epochs": args.epochs,
        "ckpt_directory": args.dir,
        "ckpt_save_best_metric": "loss",
        "ckpt_keep_limit": 3,
        "ckpt_checksum": args.checksum,
        "ckpt_async": args.async_,
        "ckpt_dedup": args.dedup,
    }
    trainer: Any
    if args.framework == "files":
        trainer = FilesTrainer(g, args.size * 16384)
    elif args.framework == "torch":
        trainer = TorchTrainer(g, args.size)
    else:
        trainer = KerasTrainer(g, args.size)
    log = open(args.log, "a", encoding="utf-8")

    def emit(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())

    start = trainer.restart()
    emit(f"restart {start} {trainer.digest()}")
    print("ready", flush=True)
    if args.hold:
        sys.stdin.readline()
    for epoch in range(start, args.epochs):
        loss = trainer.train_epoch(epoch)
        emit(f"saving {epoch + 1} {trainer.digest()}")
        trainer.save(epoch, loss)
        emit(f"saved {epoch + 1}")
    trainer.finish()
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
