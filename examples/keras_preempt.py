"""Keras model.fit that a stop signal interrupts mid-epoch; the next run goes on exactly.

    python examples/keras_preempt.py --epochs 3 --ckpt_directory ./save-preempt &
    sleep 20; kill -USR1 $!; wait    # saves ckpts/epochs/NNN+BBBBBB at the next batch
    python examples/keras_preempt.py --epochs 3 --ckpt_directory ./save-preempt

The second run continues the interrupted epoch at the batch after the last one trained,
in the same shuffled order, and ends with the weights an uninterrupted run would have.
Any Keras 3 backend works (KERAS_BACKEND=tensorflow, torch or jax).
"""

import argparse

import keras
import numpy as np

import candle_ckpt as candle


def main() -> None:
    parser = argparse.ArgumentParser(description="Keras training that resumes mid-epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40000)
    candle.ckpt_parser(parser)  # --ckpt_directory, --ckpt_signals, ...
    gParameters = vars(parser.parse_args())
    if gParameters.get("ckpt_signals") in (None, "auto"):  # "auto": only under SLURM
        gParameters["ckpt_signals"] = "SIGUSR1,SIGTERM"

    rng = np.random.default_rng(0)  # the same data in every run
    n = gParameters["samples"]
    x = rng.normal(size=(n, 16)).astype("float32")
    y = (x[:, :1] - 2 * x[:, 1:2] + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    x_val, y_val = x[: n // 10], y[: n // 10]

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")

    # --8<-- [start:usage]
    ckpt = candle.CandleCkptKeras(gParameters)
    ckpt.set_model(model)
    J = ckpt.restart(model)  # a mid-epoch checkpoint too: J["batch"] batches of the next

    # The training data, shuffled per epoch from the seed: after a restart mid-epoch,
    # fit continues that epoch at the next batch (the ones trained are not read again).
    train = ckpt.dataset(x, y, batch_size=32, shuffle=True, seed=1)
    model.fit(train, epochs=gParameters["epochs"], initial_epoch=J["epoch"] if J else 0,
              validation_data=(x_val, y_val), callbacks=[ckpt], verbose=2)
    # --8<-- [end:usage]


if __name__ == "__main__":
    main()
