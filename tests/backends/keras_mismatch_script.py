"""Child process for the Keras validate-then-apply tests (KERAS_BACKEND set by the parent).

Saves a checkpoint of a small Adam model, then restarts into a model that does not fit
(``shape``), an optimizer of another type (``optimizer``), or from a checkpoint whose
RNG file is damaged (``rng``), and prints JSON: the error class, its message, and
whether every live value (weights, optimizer variables, seed generators, global RNGs)
is bit-identical to before the restart.

The ``late-*`` cases restart before ``compile`` (NT3's order), so the optimizer state is
checked only when ``fit`` begins: compiled with SGD (``late-optimizer``) or with an
AMSGrad Adam, which has more variables (``late-count``). They print the error ``fit``
raised, whether the optimizer kept its fresh state, and the error of a second ``fit``
(the checkpoint's state must stay pending, not be dropped).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import keras
import numpy as np

import candle_ckpt as candle


def build(width: int, optimizer: str) -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(1e-2) if optimizer == "adam" else keras.optimizers.SGD(1e-2)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)  # builds and moves the optimizer state
    return model


def live(model: keras.Model) -> list[np.ndarray]:
    values = [np.array(v) for v in model.get_weights()]
    values += [np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for sg in getattr(layer, "_seed_generators", []) or []:
            values.append(np.array(keras.ops.convert_to_numpy(sg.state)))
    values.append(np.random.get_state()[1].copy())
    values.append(np.array(random.getstate()[1]))
    return values


def late_restart(case: str, params: dict[str, object], x: np.ndarray) -> dict[str, object]:
    """Restart into an uncompiled model, compile it with an optimizer that does not fit."""
    keras.utils.set_random_seed(3)
    target = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                               keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    ckpt = candle.CandleCkptKeras(params, logger=None)
    ckpt.set_model(target)
    J = ckpt.restart(target)
    assert J is not None and J["epoch"] == 2
    opt = keras.optimizers.SGD(1e-2) if case == "late-optimizer" else \
        keras.optimizers.Adam(1e-2, amsgrad=True)
    target.compile(optimizer=opt, loss="mse")
    errors = []
    for _ in range(2):
        try:
            target.fit(x, x[:, :1], epochs=3, initial_epoch=2, verbose=0, callbacks=[ckpt])
            errors.append({"error": None, "message": ""})
        except Exception as err:  # reported to the parent
            errors.append({"error": type(err).__name__, "message": str(err)})
    fresh = all(not np.any(keras.ops.convert_to_numpy(v)) for v in opt.variables
                if "learning_rate" not in v.path)
    ckpt.close()
    return {**errors[0], "again": errors[1]["error"], "optimizer_fresh": fresh}


def main() -> int:
    case, directory = sys.argv[1], Path(sys.argv[2])
    params = {"epochs": 5, "ckpt_directory": str(directory), "ckpt_restart_mode": "required",
              "ckpt_save_best_metric": "loss"}
    saved = build(8, "adam")
    ckpt = candle.CandleCkptKeras(params, logger=None)
    ckpt.set_model(saved)
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    saved.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[ckpt])
    if case == "rng":
        for epoch in ("001", "002"):
            rng_file = directory / "ckpts" / "epochs" / epoch / "rng-state.json"
            state = json.loads(rng_file.read_text())
            state["numpy_random"]["key"] = state["numpy_random"]["key"][:10]
            text = json.dumps(state)
            rng_file.write_text(text)
            info_file = rng_file.parent / "ckpt-info.json"
            info = json.loads(info_file.read_text())
            info["files"]["rng-state.json"]["size"] = len(text.encode())
            info_file.write_text(json.dumps(info))
    if case.startswith("late-"):
        print("RESULT " + json.dumps(late_restart(case, params, x)))
        return 0
    target = build(9 if case == "shape" else 8, "sgd" if case == "optimizer" else "adam")
    before = live(target)
    restarted = candle.CandleCkptKeras(params, logger=None)
    result: dict[str, object] = {"error": None}
    try:
        restarted.restart(target)
    except Exception as err:  # reported to the parent
        result = {"error": type(err).__name__, "message": str(err)}
    after = live(target)
    result["unchanged"] = len(before) == len(after) and all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
