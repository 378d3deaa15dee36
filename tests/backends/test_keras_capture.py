"""The Keras capture records exactly what Keras' own saving walk records."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras.src.saving import saving_lib  # noqa: E402

from candle_ckpt.backends.keras import stores  # noqa: E402


@pytest.mark.parametrize("optimizer", ["adam", "sgd-momentum", "adamw"])
def test_optimizer_recorded_directly_equals_keras_walk(optimizer: str) -> None:
    """We read a stock optimizer's variables ourselves (no variable.numpy() copy): the
    entries, names, order, values and dtypes must be exactly those of Keras' walk."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    opt = {"adam": keras.optimizers.Adam(1e-2),
           "sgd-momentum": keras.optimizers.SGD(1e-2, momentum=0.9),
           "adamw": keras.optimizers.AdamW(1e-2)}[optimizer]
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 1), "float32"), epochs=1, verbose=0)
    ours = stores.capture_weights(model, [])
    store = stores.recording_store_class()()
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                           visited_saveables=set())
    reference = store.entries
    assert list(ours) == list(reference)
    for path, (metadata, values) in reference.items():
        assert ours[path][0] == metadata, path
        assert list(ours[path][1]) == list(values), path
        for key, value in values.items():
            got = ours[path][1][key]
            assert got.dtype == value.dtype and np.array_equal(got, value), (path, key)
    assert "optimizer" in ours and len(ours["optimizer"][1]) == len(opt.variables)
