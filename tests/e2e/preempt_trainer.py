"""Child process for the pre-emption tests: a torch loop or a Keras fit that the parent
signals mid-epoch. After every batch it prints ``batch E B`` and waits for a line on
stdin, so the parent knows exactly where training is when it sends the signal.

Writes a JSON result: where the stop-save happened, a digest of the weights at that
moment (resume) or after restart (resume mode), and the handler in place afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
from typing import Any

import numpy as np


def digest(arrays: list[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def handshake(text: str) -> None:
    print(text, flush=True)
    sys.stdin.readline()


def params(args: argparse.Namespace) -> dict[str, Any]:
    return {"epochs": args.epochs, "ckpt_directory": args.ckpt_dir,
            "ckpt_signals": "SIGUSR1,SIGTERM", "ckpt_async": args.async_save,
            "ckpt_save_best_metric": "loss", "ckpt_checksum": True}


def run_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import candle_ckpt as candle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    ckpt = candle.CandleCkptPyTorch(params(args), verbose=False)
    ckpt.set_model({"model": model, "optimizer": opt})
    J = ckpt.restart(model)
    result: dict[str, Any] = {"J": None if J is None else {"epoch": J["epoch"],
                                                            "batch": J["batch"]}}

    def weights() -> str:
        return digest([p.detach().numpy() for p in model.parameters()])

    if args.mode == "resume":
        result["weights"] = weights()
        ckpt.close()
        return result
    handshake("ready")
    stopped = None
    for epoch in range(args.epochs):
        for i in range(args.batches):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i * 8:(i + 1) * 8]),
                                                y[i * 8:(i + 1) * 8])
            loss.backward()
            opt.step()
            if ckpt.ckpt_batch(epoch, i):
                stopped = (epoch, i + 1)
                break
            handshake(f"batch {epoch} {i}")
        if stopped:
            break
        ckpt.ckpt_epoch(epoch, float(loss))
    result["stopped"] = stopped
    result["weights"] = weights()
    ckpt.on_train_end()
    result["handler_after"] = str(signal.getsignal(signal.SIGUSR1))
    return result


def run_keras(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    import candle_ckpt as candle

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    ckpt = candle.CandleCkptKeras(params(args), verbose=False)
    ckpt.set_model(model)
    J = ckpt.restart(model)
    result: dict[str, Any] = {"J": None if J is None else {"epoch": J["epoch"],
                                                            "batch": J["batch"]}}
    if args.mode == "resume":
        result["weights"] = digest(model.get_weights())
        ckpt.close()
        return result

    class Handshake(keras.callbacks.Callback):
        epoch = 0

        def on_train_begin(self, logs: Any = None) -> None:
            handshake("ready")

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            handshake(f"batch {self.epoch} {batch}")

    model.fit(x, y, batch_size=8, epochs=args.epochs, shuffle=False, verbose=0,
              callbacks=[Handshake(), ckpt])
    result["stopped"] = ckpt.stop_requested
    result["weights"] = digest(model.get_weights())
    result["handler_after"] = str(signal.getsignal(signal.SIGUSR1))
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("framework", choices=["torch", "keras"])
    ap.add_argument("mode", choices=["train", "resume"])
    ap.add_argument("ckpt_dir")
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--async-save", action="store_true")
    args = ap.parse_args()
    result = run_torch(args) if args.framework == "torch" else run_keras(args)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
