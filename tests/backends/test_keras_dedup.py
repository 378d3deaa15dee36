"""``ckpt_dedup`` with real Keras: frozen variables stored once, restart bit-exact from a
kept checkpoint, a damaged shared object never loaded, and the export a plain
``model.load_weights`` reads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import candle_ckpt as candle  # noqa: E402


def make(seed: int = 7) -> Any:
    """A frozen 'encoder' Dense(64->512) (128 KiB kernel) and a trainable head."""
    keras.utils.set_random_seed(seed)
    encoder = keras.layers.Dense(512, activation="tanh", name="encoder")
    model = keras.Sequential([keras.Input((64,)), encoder, keras.layers.Dropout(0.2),
                              keras.layers.Dense(64, name="head")])
    encoder.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 64)).astype("float32")
    return x, np.tanh(x).astype("float32")


def params(directory: Path, **extra: Any) -> dict[str, Any]:
    return {"epochs": 4, "ckpt_directory": str(directory), "ckpt_dedup": True,
            "ckpt_keep_mode": "all", "ckpt_save_best": False, **extra}


def values(model: Any) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in
            [*model.variables, *model.optimizer.variables]]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                    for x, y in zip(a, b, strict=True))


def info(directory: Path, epoch: int) -> dict[str, Any]:
    return json.loads((directory / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text())


def fit(model: Any, directory: Path, epochs: int, initial: int = 0, **extra: Any) -> None:
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=epochs, initial_epoch=initial, verbose=0,
              shuffle=False, callbacks=[candle.CandleCkptKeras(params(directory, **extra),
                                                               logger=None)])


def test_frozen_variables_are_stored_once_and_restart_is_bit_exact(tmp_path):
    model = make()
    fit(model, tmp_path / "run", 2, ckpt_checksum=True)
    after_2 = values(model)
    fit(model, tmp_path / "run", 4, initial=2, ckpt_checksum=True)
    objects = [set(info(tmp_path / "run", e)["objects"]) for e in (1, 2, 3, 4)]
    shared = set.intersection(*objects)
    assert len(shared) == 1  # the encoder's kernel
    assert all(len(a - b) >= 1 for a, b in zip(objects, objects[1:], strict=False))
    assert info(tmp_path / "run", 4)["model_file"] == "model.weights.json"
    straight = make()
    fit(straight, tmp_path / "straight", 4)

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy, symlinks=True)
    last = copy / "ckpts" / "last"
    last.unlink()
    os.symlink("epochs/002", last)
    resumed = make(seed=99)
    J = candle.restart(params(copy, ckpt_checksum=True, ckpt_restart_mode="required"), resumed)
    assert J["epoch"] == 2
    assert same(values(resumed), after_2)
    fit(resumed, copy, 4, initial=J["epoch"])
    assert same(values(resumed), values(straight))


def test_a_damaged_shared_object_is_never_loaded(tmp_path):
    model = make()
    fit(model, tmp_path, 2, ckpt_checksum=True)
    own = sorted(set(info(tmp_path, 2)["objects"]) - set(info(tmp_path, 1)["objects"]))
    path = tmp_path / "ckpts" / "objects" / own[0][:2] / own[0]
    data_ = bytearray(path.read_bytes())
    data_[-3] ^= 0x10
    path.write_bytes(bytes(data_))
    resumed = make(seed=3)
    J = candle.restart(params(tmp_path, ckpt_checksum=True), resumed)
    assert J["epoch"] == 1 and [s["epoch"] for s in J["skipped"]] == [2]


def test_export_writes_the_weights_h5_that_load_weights_reads(tmp_path):
    model = make()
    fit(model, tmp_path, 2)
    out = candle.export(tmp_path, tmp_path / "final.weights.h5")
    fresh = make(seed=11)
    fresh.optimizer.build(fresh.trainable_variables)  # else Keras skips its state
    fresh.load_weights(out)
    weights = lambda m: [np.array(keras.ops.convert_to_numpy(v))  # noqa: E731
                         for v in [*m.weights, *m.optimizer.variables]
                         if "seed_generator" not in v.path]
    assert same(weights(fresh), weights(model))
    state = candle.load_state(tmp_path, 1)
    # Keras' own paths (by class: the encoder is the first Dense, the head the second)
    assert {"layers/dense/vars", "layers/dense_1/vars", "optimizer/vars"} <= set(state)
    kernel = np.array(keras.ops.convert_to_numpy(model.get_layer("encoder").kernel))
    assert np.array_equal(state["layers/dense/vars"]["0"], kernel)  # frozen: unchanged
    head = np.array(keras.ops.convert_to_numpy(model.get_layer("head").kernel))
    assert not np.array_equal(state["layers/dense_1/vars"]["0"], head)  # epoch 1's


def test_a_model_with_only_small_variables_restarts(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = np.ones((8, 4), "float32")
    model.fit(x, x[:, :2], epochs=1, verbose=0,
              callbacks=[candle.CandleCkptKeras(params(tmp_path), logger=None)])
    assert info(tmp_path, 1)["objects"] == {}
    keras.utils.set_random_seed(2)
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    fresh.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    J = candle.restart(params(tmp_path, ckpt_restart_mode="required"), fresh)
    assert J["skipped"] == []
    assert same([np.array(keras.ops.convert_to_numpy(v)) for v in fresh.weights],
                [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights])


def test_a_restart_before_compile_applies_the_optimizer_state_when_training_begins(tmp_path):
    straight = make()
    fit(straight, tmp_path / "straight", 3)
    model = make()
    fit(model, tmp_path / "run", 2)
    keras.utils.set_random_seed(99)
    fresh = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="tanh",
                                                                     name="encoder"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(64, name="head")])
    fresh.get_layer("encoder").trainable = False
    J = candle.restart(params(tmp_path / "run", ckpt_restart_mode="required"), fresh)
    assert J["epoch"] == 2  # the optimizer's state waits for training to begin
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    fit(fresh, tmp_path / "run", 3, initial=J["epoch"])
    assert same(values(fresh), values(straight))
