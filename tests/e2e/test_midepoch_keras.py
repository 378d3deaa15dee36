"""Exact mid-epoch resume of Keras ``fit``, with real processes and a real SIGUSR1.

On every Keras backend a ``fit`` over ``CandleCkptKeras.dataset`` (shuffled, Dropout) is
signalled mid-epoch, commits a mid-epoch checkpoint at the next batch and exits; a fresh
process restarts from it and trains to the end. It must end with every model and
optimizer variable bit-identical to a run that was never interrupted, having trained
exactly as many batches in total.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.process import child_env
from tests.helpers.signals import drive

TRAINER = Path(__file__).parent / "midepoch_keras_trainer.py"
EPOCHS, BATCHES = 3, 12  # the trainer's data: 12 batches per epoch


def run(backend: str, mode: str, ckpt_dir: Path, out: Path, *extra: str,
        signal_at: str | None = None) -> dict[str, Any]:
    env = dict(child_env(), KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, str(TRAINER), mode, str(ckpt_dir), str(out), *extra]
    if signal_at is None:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        child = subprocess.Popen([*command, "--handshake"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
        drive(child, signal_at, [signal.SIGUSR1])
        assert child.stderr is not None
        assert child.returncode == 0, child.stderr.read()[-3000:]
    result: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    with np.load(out.with_suffix(".npz")) as arrays:
        result["arrays"] = {k: arrays[k] for k in arrays.files}
    return result


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    assert any(k.startswith("optimizer_") for k in a)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), \
            f"{key} differs"


CASES = [("tensorflow", "arrays"), ("torch", "arrays"), ("jax", "arrays"),
         ("tensorflow", "tfdata"), ("tensorflow", "pydataset"), ("jax", "pydataset")]


@pytest.mark.parametrize(("backend", "kind"), CASES, ids=[f"{b}-{k}" for b, k in CASES])
def test_a_fit_signalled_mid_epoch_resumes_at_the_next_batch_bit_identical(
        tmp_path: Path, backend: str, kind: str) -> None:
    pytest.importorskip(backend)
    straight = run(backend, "train", tmp_path / "straight", tmp_path / "straight",
                   "--input", kind, "--epochs", str(EPOCHS))
    assert straight["batches"] == EPOCHS * BATCHES and not straight["stopped"]

    ckpt_dir = tmp_path / "c"
    first = run(backend, "train", ckpt_dir, tmp_path / "first", "--input", kind,
                "--epochs", str(EPOCHS), signal_at="batch 1 4")
    assert first["stopped"] is True
    last = os.readlink(ckpt_dir / "ckpts" / "last")
    done = first["batches"] - BATCHES  # batches of epoch 2 trained before the stop
    assert last == f"epochs/001+{done:06d}", last
    # Signalled after batch 5: the stop is at the next batch end the handler has run
    # by; on a loaded machine the signal may reach the process a batch or two later.
    assert 5 <= done <= BATCHES
    order = json.loads((ckpt_dir / "ckpts" / last / "data-order.json").read_text())
    assert (order["epoch"], order["batch"], order["batches"]) == (1, done, BATCHES)

    resumed = run(backend, "resume", ckpt_dir, tmp_path / "resumed", "--input", kind,
                  "--epochs", str(EPOCHS))
    assert resumed["J"] == {"epoch": 1, "batch": done}
    assert first["batches"] + resumed["batches"] == straight["batches"]
    assert resumed["iterations"] == straight["iterations"] == EPOCHS * BATCHES
    assert_bit_identical(resumed["arrays"], straight["arrays"])
    if kind == "pydataset":
        # The resumed epoch reads the batches the uninterrupted run read after the first
        # `done`, in its order, and not those (reads before epoch 1 began are Keras'
        # peek at one batch to build its metrics: one of those read anyway).
        def in_epoch(reads: list[list[int]], epoch: int) -> list[int]:
            return [index for e, index in reads if e == epoch]

        order = in_epoch(straight["read"], 1)
        assert sorted(order) == list(range(BATCHES))
        assert in_epoch(resumed["read"], 1) == order[done:]
        assert set(in_epoch(resumed["read"], -1)) <= set(order[done:])
    log = (ckpt_dir / "ckpt.log").read_text()
    assert f"resuming epoch 2 at batch {done + 1} of {BATCHES}" in log
