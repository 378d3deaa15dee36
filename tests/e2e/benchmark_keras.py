"""A small Keras benchmark written as CANDLE's are, for the checkpoint/restart regression.

    python benchmark_keras.py --epochs N [--ckpt_* ...]

Checkpoints go to ./save (the ckpt_directory default). As NT3 and P1B2 do: the callback
is built with verbose=False, restarts the model, and fit starts at J["epoch"]; Keras
prints "Epoch N/M" for each epoch.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import candle_ckpt as candle


def main() -> None:
    parser = candle.ckpt_parser(argparse.ArgumentParser())
    parser.add_argument("--epochs", type=int, default=3)
    params = vars(parser.parse_args())

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 8)).astype("float32")
    y = x[:, :1] - x[:, 1:2]
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")

    initial_epoch = 0
    ckpt = candle.CandleCkptKeras(params, verbose=False)
    ckpt.set_model(model)
    J = ckpt.restart(model)
    if J is not None:
        initial_epoch = J["epoch"]
    print(f"initial_epoch: {initial_epoch}")
    model.fit(x, y, batch_size=32, epochs=params["epochs"], initial_epoch=initial_epoch,
              validation_split=0.25, callbacks=[ckpt], verbose=2)


if __name__ == "__main__":
    main()
