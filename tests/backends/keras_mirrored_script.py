"""Child process: a Keras fit under tf.distribute.MirroredStrategy on two logical CPUs.

    python keras_mirrored_script.py CKPT_DIR OUT.npy --epochs N [--exit-after K]

The logical devices must be configured before TensorFlow initializes, hence a child.
The model is built, compiled and restarted inside the strategy scope, the way
MirroredStrategy users write it; ``--exit-after K`` dies with os._exit(17) right after
epoch K's checkpoint. The final weights are written to OUT.npy.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import candle_ckpt as candle  # noqa: E402


class ExitAfter(keras.callbacks.Callback):
    def __init__(self, epochs_done: int) -> None:
        super().__init__()
        self.epochs_done = epochs_done

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.epochs_done:
            os._exit(17)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt_dir")
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--exit-after", type=int, default=0)
    args = ap.parse_args()

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        ckpt = candle.CandleCkptKeras({"epochs": args.epochs, "ckpt_directory": args.ckpt_dir,
                                       "ckpt_save_best_metric": "loss"}, logger=None)
        J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J else 0
    print(f"initial_epoch={initial_epoch}", flush=True)
    callbacks: list[keras.callbacks.Callback] = [ckpt]  # the checkpoint first, then the exit
    if args.exit_after:
        callbacks.append(ExitAfter(args.exit_after))
    model.fit(x, y, batch_size=16, epochs=args.epochs, initial_epoch=initial_epoch,
              callbacks=callbacks, verbose=0, shuffle=False)
    np.save(args.out, np.concatenate([w.ravel() for w in model.get_weights()]))


if __name__ == "__main__":
    main()
