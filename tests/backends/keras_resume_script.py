"""Train a tiny Keras model for the exact-resume tests (run in a subprocess).

    python keras_resume_script.py MODE CKPT_DIR OUT.npz --epochs N [--kill-after K]
        [--shuffle] [--api new|old] [--compile-after-restart] [--async]

MODE "straight" trains N epochs without checkpointing; "killed" trains with the
checkpoint callback and dies with os._exit(17) right after epoch K's checkpoint;
"resume" restarts from the checkpoint and trains up to epoch N. Straight and resume
write every model and optimizer variable to OUT.npz. KERAS_BACKEND comes from the
environment. ``--compile-after-restart`` is NT3's order: restart into the built but not
yet compiled model, then ``compile`` (the optimizer state is applied when fit begins).
"""

from __future__ import annotations

import argparse
import os

import keras
import numpy as np

import candle_ckpt as candle


def build_model(compile_now: bool = True) -> keras.Model:
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(1),
    ])
    if compile_now:
        compile_model(model)
    return model


def compile_model(model: keras.Model) -> None:
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")


class KillAfter(keras.callbacks.Callback):
    """Die like a preempted job, right after epoch K's checkpoint is committed."""

    def __init__(self, epochs_done: int) -> None:
        super().__init__()
        self.epochs_done = epochs_done

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        if epoch + 1 == self.epochs_done:
            os._exit(17)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["straight", "killed", "resume"])
    parser.add_argument("ckpt_dir")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--shuffle", action="store_true")
    parser.add_argument("--api", choices=["new", "old"], default="new")
    parser.add_argument("--compile-after-restart", action="store_true")
    parser.add_argument("--async", dest="async_", action="store_true")
    args = parser.parse_args()

    keras.utils.set_random_seed(1234)
    data = np.random.default_rng(0)  # independent of the global RNGs the run uses
    x = data.normal(size=(96, 8)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) + data.normal(size=(96, 1))).astype("float32")
    x_val, y_val = x[:16] + 0.1, y[:16]
    late = args.compile_after_restart and args.mode != "straight"
    model = build_model(compile_now=not late)
    fit_args = dict(x=x, y=y, batch_size=16, shuffle=args.shuffle, verbose=0,
                    validation_data=(x_val, y_val))
    g = {"epochs": args.epochs, "ckpt_directory": args.ckpt_dir, "ckpt_checksum": True,
         "ckpt_async": args.async_}

    if args.mode == "straight":
        model.fit(epochs=args.epochs, **fit_args)
    else:
        initial_epoch = 0
        if args.api == "old":  # the spec's usage (NT3's older form with late compile)
            J = candle.restart(g, model)
            if J is not None:
                initial_epoch = J["epoch"]
                g["ckpt_best_metric_last"] = J["best_metric_last"]
            if late:
                compile_model(model)
            ckpt = candle.CandleCheckpointCallback(g, verbose=False)
        else:  # the newer pattern
            ckpt = candle.CandleCkptKeras(g, verbose=False)
            ckpt.set_model(model)
            J = ckpt.restart(model)
            initial_epoch = J["epoch"] if J is not None else 0
            if late:
                compile_model(model)
        if args.mode == "killed":
            assert J is None, "the killed run must start from scratch"
            callbacks = [ckpt, KillAfter(args.kill_after)]
        else:
            assert J is not None, "nothing to resume from"
            callbacks = [ckpt]
        model.fit(epochs=args.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                  **fit_args)
        if args.mode == "killed":
            raise SystemExit("the kill callback did not fire")
    arrays = {f"model_{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i}": keras.ops.convert_to_numpy(v)
                   for i, v in enumerate(model.optimizer.variables)})
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
