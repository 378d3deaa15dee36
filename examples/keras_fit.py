"""Keras model.fit with CANDLE checkpoints: run it again and it resumes.

    python examples/keras_fit.py --epochs 5 --ckpt_directory ./save-keras
    python examples/keras_fit.py --epochs 10 --ckpt_directory ./save-keras  # resumes at 5

Any Keras 3 backend works (KERAS_BACKEND=tensorflow, torch or jax).
Every --ckpt_* option is a CANDLE checkpoint parameter (candle.ckpt_parser adds them all).
"""

import argparse

import keras
import numpy as np

import candle_ckpt as candle


def main() -> None:
    parser = argparse.ArgumentParser(description="Keras training with CANDLE checkpoints")
    parser.add_argument("--epochs", type=int, default=10)
    candle.ckpt_parser(parser)  # --ckpt_directory, --ckpt_checksum, --ckpt_async, ...
    gParameters = vars(parser.parse_args())  # CANDLE's parameter dict

    # Synthetic regression data, the same in every run.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 16)).astype("float32")
    y = (x[:, :1] - 2 * x[:, 1:2] + 0.1 * rng.normal(size=(1024, 1))).astype("float32")

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,)),  # restart needs a built model
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")

    # --8<-- [start:usage]
    # Before training: restore the newest valid checkpoint, if there is one.
    initial_epoch = 0
    J = candle.restart(gParameters, model)
    if J is not None:
        initial_epoch = J["epoch"]

    # A callback for checkpoints.
    ckpt = candle.CandleCheckpointCallback(gParameters)
    model.fit(x, y, batch_size=32, epochs=gParameters["epochs"], initial_epoch=initial_epoch,
              validation_split=0.125, callbacks=[ckpt], verbose=2)
    # The final report (checkpoints written, best epoch) is logged at the end of fit.
    # --8<-- [end:usage]


if __name__ == "__main__":
    main()
