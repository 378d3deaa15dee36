"""Child process of the exit tests: a training script that ends right after its last
``ckpt_epoch`` (no ``on_train_end``, no ``close``), with ``ckpt_async`` and
``ckpt_checksum`` on, as many PyTorch loops do.

The background save of the last epoch (3) is held at its first step through
``candle_ckpt.storage.fsio._on_step`` (the crash-injection seam) until what the test needs:

- ``exit``: until the interpreter has begun to exit (the main thread is joined), so the
  save is known to be in flight then; a marker file says so.
- ``fail``: the same, then the save fails (ENOSPC injected at that step).
- ``sigterm-exit`` / ``sigterm-training``: it prints ``saving 3`` and waits for a line on
  stdin; the parent sends SIGTERM first. The script has returned by then (``-exit``),
  or is still training (``-training``: the main thread waits up to a minute, then
  prints ``still alive`` and exits 0, which is what the test must not see).

usage: exit_trainer.py torch|keras SCENARIO CKPT_DIR MARKER
"""

from __future__ import annotations

import errno
import sys
import threading
from pathlib import Path
from typing import Any

import candle_ckpt.storage.fsio

FRAMEWORK, SCENARIO, CKPT_DIR, MARKER = sys.argv[1:5]
PARAMS = {"epochs": 3, "ckpt_directory": CKPT_DIR, "ckpt_async": True, "ckpt_checksum": True,
          "ckpt_save_best_metric": "loss", "ckpt_signals": "none"}
works = []


def hold(step: str) -> None:
    if step != "work-created" or threading.current_thread() is threading.main_thread():
        return
    works.append(step)
    if len(works) < 3:
        return
    if SCENARIO.startswith("sigterm"):
        print("saving 3", flush=True)
        sys.stdin.readline()
        return
    threading.main_thread().join()  # returns once the interpreter has begun to exit
    Path(MARKER).write_text("the script had returned; the save of epoch 3 was in flight\n")
    if SCENARIO == "fail":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")


def train_torch() -> Any:
    import torch

    import candle_ckpt as candle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1200, 1200), torch.nn.ReLU(),
                                torch.nn.Linear(1200, 1))  # 5.8 MB: hashed while written
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 1200), torch.randn(32, 1)
    ckpt = candle.CandleCkptPyTorch(PARAMS, verbose=False)
    ckpt.set_model({"model": model, "optimizer": opt})
    for epoch in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ckpt.ckpt_epoch(epoch, loss.item())
    return ckpt


def train_keras() -> Any:
    import keras
    import numpy as np

    import candle_ckpt as candle

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1000, activation="relu"),
                              keras.layers.Dense(1)])  # 4 MB
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.random.rand(32, 1000).astype("float32"), np.random.rand(32, 1).astype("float32")
    ckpt = candle.CandleCkptKeras(PARAMS, verbose=False)
    ckpt.set_model(model)
    ckpt.on_train_begin()
    for epoch in range(3):  # a custom loop driving the callback's hooks
        loss = float(model.train_on_batch(x, y))
        ckpt.on_epoch_end(epoch, {"loss": loss})
    return ckpt


candle_ckpt.storage.fsio._on_step = hold
engine = train_torch() if FRAMEWORK == "torch" else train_keras()
if SCENARIO == "sigterm-training":
    threading.Event().wait(60)  # training goes on; a deferred SIGTERM ends it
    print("still alive", flush=True)
