"""Child process for the exact mid-epoch resume tests of Keras ``fit``.

    python midepoch_keras_trainer.py MODE CKPT_DIR OUT [--input arrays|pydataset|tfdata]
        [--epochs N] [--handshake]

MODE "train" restarts if it can (from nothing at first) and trains to the end, or until
a stop signal's mid-epoch checkpoint; "resume" must restart from a checkpoint. With
``--handshake`` it prints ``batch E B`` after every batch and waits for a line on stdin,
so the parent knows where training is when it signals. The model has Dropout; the data
is shuffled (``shuffle=True``; a tf.data pipeline shuffles with a fixed seed) and ends in
a partial batch. OUT.npz gets every model and optimizer variable; OUT.json where
training stopped, the batches trained in this process and the batches of the data read.
KERAS_BACKEND comes from the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import keras
import numpy as np

import candle_ckpt as candle

SAMPLES, FEATURES, BATCH = 90, 6, 8  # 12 batches per epoch, the last one of 2


def make_data() -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(3)  # independent of the global RNGs the run uses
    x = data.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = (x @ data.normal(size=(FEATURES, 1)) + 0.1 * data.normal(size=(SAMPLES, 1)))
    return x, y.astype("float32")


class Progress(keras.callbacks.Callback):
    """Counts batches; with the handshake, reports each and waits for the parent."""

    def __init__(self, handshake: bool) -> None:
        super().__init__()
        self.handshake = handshake
        self.epoch = -1
        self.batches = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches += 1
        if self.handshake:
            print(f"batch {self.epoch} {batch}", flush=True)
            sys.stdin.readline()


class Batches(keras.utils.PyDataset):
    """Fixed batches of the arrays; records which are read, in which epoch (-1: before
    the first began)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, read: list[list[int]],
                 progress: Progress) -> None:
        super().__init__()
        self.x, self.y, self.read, self.progress = x, y, read, progress

    def __len__(self) -> int:
        return -(-len(self.x) // BATCH)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.read.append([self.progress.epoch, int(index)])
        part = slice(index * BATCH, (index + 1) * BATCH)
        return self.x[part], self.y[part]


def training_input(ckpt: Any, kind: str, read: list[list[int]], progress: Progress) -> Any:
    x, y = make_data()
    if kind == "arrays":
        return ckpt.dataset(x, y, batch_size=BATCH, shuffle=True, seed=11)
    if kind == "pydataset":
        return ckpt.dataset(Batches(x, y, read, progress), shuffle=True, seed=11)
    import tensorflow as tf

    pipeline = (tf.data.Dataset.from_tensor_slices((x, y))
                .shuffle(SAMPLES, seed=5, reshuffle_each_iteration=False).batch(BATCH))
    return ckpt.dataset(pipeline, shuffle=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "resume"])
    ap.add_argument("ckpt_dir")
    ap.add_argument("out")
    ap.add_argument("--input", choices=["arrays", "pydataset", "tfdata"], default="arrays")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--handshake", action="store_true")
    args = ap.parse_args()

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    g = {"epochs": args.epochs, "ckpt_directory": args.ckpt_dir, "ckpt_checksum": True,
         "ckpt_signals": "SIGUSR1", "ckpt_save_best_metric": "loss"}
    ckpt = candle.CandleCkptKeras(g, verbose=False)
    ckpt.set_model(model)
    J = ckpt.restart(model)
    if args.mode == "resume" and J is None:
        raise SystemExit("nothing to resume from")
    read: list[list[int]] = []
    progress = Progress(args.handshake)
    data = training_input(ckpt, args.input, read, progress)
    model.fit(data, epochs=args.epochs, initial_epoch=J["epoch"] if J else 0,
              callbacks=[progress, ckpt], verbose=0)
    arrays = {f"model_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i}": keras.ops.convert_to_numpy(v)
                   for i, v in enumerate(model.optimizer.variables)})
    np.savez(args.out + ".npz", **arrays)
    result = {"J": None if J is None else {"epoch": J["epoch"], "batch": J["batch"]},
              "stopped": ckpt.stop_requested, "batches": progress.batches, "read": read,
              "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations))}
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
