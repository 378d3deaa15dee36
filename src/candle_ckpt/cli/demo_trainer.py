"""The child of ``candle-ckpt demo``: one training run with checkpointing.

Run as ``python -m candle_ckpt.cli.demo_trainer --framework torch --ckpt-dir DIR
--epochs N --result FILE [--announce-after K]``. It restarts from DIR (mode "auto"),
trains a small MLP on synthetic data up to N epochs, and writes the digests of its
final weights to FILE. With ``--announce-after K`` (run A of the demo) it prints
:data:`MARKER` once epoch K's checkpoint is committed, then never finishes on its own:
at the middle of the next epoch it waits on stdin, so the parent's SIGKILL always lands
mid-run.

This module imports nothing of the parent (:mod:`candle_ckpt.cli.demo`); the parent
imports the few constants it shares from here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..storage.layout import Layout

MARKER = "CANDLE-CKPT-DEMO-COMMITTED"  # run A's stdout line: epoch K is committed
FEATURES, HIDDEN, TRAIN, VAL, BATCH = 32, 64, 1024, 256, 32
SEED = 20240601


def _params(ckpt_dir: str, epochs: int) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "ckpt_directory": ckpt_dir,
        "ckpt_checksum": True,
        "ckpt_save_best_metric": "val_loss",
        "ckpt_restart_mode": "auto",
    }


class _Announcer:
    """Run A's side of the kill: announce the commit, then never finish on its own."""

    def __init__(self, ckpt_dir: str, after: int | None, batches: int) -> None:
        self.layout = Layout.ours(Path(ckpt_dir))
        self.after = after
        self.halfway = batches // 2
        self.announced = False

    def epoch_committed(self, epoch_done: int) -> None:
        if self.after is None or epoch_done != self.after:
            return
        last = self.layout.read_pointer("last").epoch
        if last != epoch_done:  # e.g. an asynchronous save: never announce what is not there
            raise SystemExit(f"demo: epoch {epoch_done} finished but last -> {last}")
        print(f"{MARKER} {epoch_done}", flush=True)
        self.announced = True

    def batch_done(self, batch: int) -> None:
        if self.announced and batch == self.halfway:
            sys.stdin.read()  # the parent never writes: this returns only if it went away
            raise SystemExit("demo: the parent went away before killing this run")


def _digest(named: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    import numpy as np

    out = []
    for name, value in named:
        array = np.ascontiguousarray(value)
        out.append({"name": name, "shape": list(array.shape), "dtype": str(array.dtype),
                    "sha256": hashlib.sha256(array.tobytes()).hexdigest()})
    return out


def _data(numpy_like: Callable[..., Any]) -> tuple[Any, Any, Any, Any]:
    """Synthetic regression data, the same in every process (its own seeded RNG)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    w = rng.normal(size=(FEATURES, 1)).astype("float32")
    x = rng.normal(size=(TRAIN + VAL, FEATURES)).astype("float32")
    y = (np.tanh(x @ w) + 0.1 * rng.normal(size=(TRAIN + VAL, 1))).astype("float32")
    return (numpy_like(x[:TRAIN]), numpy_like(y[:TRAIN]), numpy_like(x[TRAIN:]),
            numpy_like(y[TRAIN:]))


def _train_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .. import CandleCkptPyTorch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    x, y, xv, yv = _data(torch.from_numpy)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(HIDDEN, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ckpt = CandleCkptPyTorch(_params(args.ckpt_dir, args.epochs))
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J else 0
    batches = TRAIN // BATCH
    announcer = _Announcer(args.ckpt_dir, args.announce_after, batches)
    val_loss = float("nan")
    for epoch in range(initial_epoch, args.epochs):
        model.train()
        order = torch.randperm(TRAIN)  # the global RNG: restored by restart
        for b in range(batches):
            idx = order[b * BATCH:(b + 1) * BATCH]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            announcer.batch_done(b)
        model.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(model(xv), yv))
        print(f"epoch {epoch + 1}/{args.epochs}  val_loss {val_loss:.6f}", flush=True)
        ckpt.ckpt_epoch(epoch, val_loss)
        announcer.epoch_committed(epoch + 1)
    ckpt.on_train_end()
    tensors = _digest((k, v.detach().cpu().numpy()) for k, v in model.state_dict().items())
    return {"resumed_from": initial_epoch if J else None, "val_loss": val_loss,
            "tensors": tensors}


def _train_keras(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from .. import CandleCkptKeras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(SEED)
    x, y, xv, yv = _data(lambda a: a)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dropout(0.1, seed=SEED),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    ckpt = CandleCkptKeras(_params(args.ckpt_dir, args.epochs))
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J else 0
    batches = TRAIN // BATCH
    announcer = _Announcer(args.ckpt_dir, args.announce_after, batches)
    logs_seen: dict[str, float] = {}

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs_seen.update(logs or {})
            print(f"epoch {epoch + 1}/{args.epochs}  val_loss {logs_seen['val_loss']:.6f}",
                  flush=True)
            announcer.epoch_committed(epoch + 1)  # runs after ckpt's on_epoch_end

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            announcer.batch_done(batch)

    model.fit(x, y, validation_data=(xv, yv), batch_size=BATCH, epochs=args.epochs,
              initial_epoch=initial_epoch, shuffle=True, verbose=0,
              callbacks=[ckpt, Progress()])
    tensors = _digest((v.path, keras.ops.convert_to_numpy(v)) for v in model.weights)
    return {"resumed_from": initial_epoch if J else None,
            "val_loss": float(logs_seen.get("val_loss", float("nan"))), "tensors": tensors}


def child_main(argv: list[str] | None = None) -> int:
    """One training run of the demo (a child process of ``run_demo``)."""
    parser = argparse.ArgumentParser(prog="python -m candle_ckpt.cli.demo_trainer")
    parser.add_argument("--framework", choices=("torch", "keras"), required=True)
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--announce-after", type=int, default=None)
    args = parser.parse_args(argv)
    result = _train_torch(args) if args.framework == "torch" else _train_keras(args)
    result.update(framework=args.framework, epochs=args.epochs)
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
