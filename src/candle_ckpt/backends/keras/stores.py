"""Keras weight stores: recording host copies of every variable Keras' own saving walk
visits, writing them as ``save_weights`` would, and feeding checked values back through
Keras' own loading walk.

Capturing walks the model with Keras' saving walk into a store that keeps numpy copies,
so a snapshot never references live variables and can be written later on another
thread; each copy goes into the previous capture's array when it fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..base import BufferReuse

# inner path -> (the path's metadata, variable key -> value), in Keras' walk order
Entries = dict[str, tuple[dict[str, Any] | None, dict[str, np.ndarray]]]
Values = dict[str, dict[str, np.ndarray]]  # inner path -> variable key -> value


def _live_array(value: Any) -> np.ndarray:
    """A numpy view of a variable's current value where the backend allows it, else a copy.

    The view (via DLPack) is only read at once, on the training thread: it saves Keras'
    own conversion copy, which on TensorFlow costs more than the copy we keep.
    """
    if isinstance(value, np.ndarray):  # e.g. optimizers hand over variable.numpy()
        return value
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tensor = tf.convert_to_tensor(value)  # reads a variable without copying it
        else:
            tensor = getattr(value, "value", value)  # a Keras variable's backend tensor
        view = np.from_dlpack(tensor)
        if view.shape == tuple(tensor.shape) and str(view.dtype) == \
                keras.backend.standardize_dtype(tensor.dtype):
            return view
    except Exception:  # no DLPack for this backend, device or dtype (e.g. bfloat16)
        pass
    return np.asarray(keras.ops.convert_to_numpy(value))


class HostArrays(BufferReuse[np.ndarray, np.ndarray]):
    """Host copies of variables' values (the buffer rule of :class:`BufferReuse`)."""

    def fits(self, buffer: Any, source: np.ndarray) -> bool:
        return (type(buffer) is np.ndarray and buffer.shape == source.shape
                and buffer.dtype == source.dtype and buffer.flags.writeable
                and not np.may_share_memory(buffer, source))

    def copy_into(self, buffer: np.ndarray, source: np.ndarray) -> np.ndarray:
        np.copyto(buffer, source)
        return buffer

    def fresh_copy(self, source: np.ndarray) -> np.ndarray:
        return np.array(source, copy=True)


_HOST_ARRAYS = HostArrays()


def recording_store_class() -> type:
    """A weights store that records numpy copies, shaped like Keras' H5IOStore.

    Keras' ``_save_state`` accepts only its own store types, hence the subclass; it never
    opens a file. Given the previous capture's entries, it copies into their arrays.
    """
    from keras.src.saving import saving_lib

    class _RecordingStore(saving_lib.H5IOStore):
        def __init__(self, previous: Entries | None = None, share: bool = False) -> None:
            self.entries: Entries = {}
            self._previous: Entries = previous or {}
            self._share = share
            self._path = ""

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict[str, Any] | None = None) -> Any:
            self._path = path
            if path not in self.entries:
                self.entries[path] = (dict(metadata) if metadata else None, {})
            return self

        def __setitem__(self, key: str, value: Any) -> None:
            if self._share:
                self.entries[self._path][1][key] = _live_array(value)
                return
            into = self._previous.get(self._path, (None, {}))[1].get(key)
            self.entries[self._path][1][key] = _HOST_ARRAYS.host_copy(_live_array(value), into)

        def __len__(self) -> int:
            return len(self.entries.get(self._path, (None, {}))[1])

        def keys(self) -> Any:
            return self.entries.get(self._path, (None, {}))[1].keys()

        def close(self) -> None:
            pass

    return _RecordingStore


def capture_weights(model: Any, skip: list[Any], previous: Entries | None = None,
                     share: bool = False) -> Entries:
    """Record every variable Keras' save_weights walks: copies, or live views (share)."""
    from keras.src.saving import saving_lib

    store = recording_store_class()(previous, share)
    optimizer = stock_optimizer(model, skip)
    visited = {id(o) for o in skip} | ({id(optimizer)} if optimizer is not None else set())
    saving_lib._save_state(
        model, weights_store=store, assets_store=None, inner_path="",
        visited_saveables=visited,
    )
    if optimizer is not None:
        # What Optimizer.save_own_variables records, minus its variable.numpy() copy of
        # every variable (half of a large model's async stall): read them like layers'.
        store.make("optimizer", metadata={"name": optimizer.name})
        for i, variable in enumerate(optimizer.variables):
            store[str(i)] = variable
    return store.entries


def stock_optimizer(model: Any, skip: list[Any]) -> Any:
    """The model's optimizer when Keras saves it the stock way (so we may record it)."""
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or any(o is optimizer for o in skip) \
            or not isinstance(optimizer, BaseOptimizer) or not isinstance(optimizer.name, str) \
            or type(optimizer).save_own_variables is not BaseOptimizer.save_own_variables:
        return None
    return optimizer


def writing_store_class() -> type:
    """Keras' H5IOStore, minus the copy its ``__setitem__`` makes of numpy arrays."""
    from keras.src.saving import saving_lib

    class _WritingStore(saving_lib.H5IOStore):
        def __setitem__(self, key: str, value: Any) -> None:
            if type(value) is not np.ndarray or value.dtype.kind not in "biuf" or not hasattr(
                self, "_h5_entry_initialized"
            ):
                super().__setitem__(key, value)  # Keras' own path (e.g. bfloat16)
                return
            if not self._h5_entry_initialized:
                self._create_h5_group(self._h5_entry_path)
            self._h5_entry_group[key] = value

    return _WritingStore


def reading_store_class() -> type:
    """A weights store over values already read and checked, shaped like Keras' H5IOStore.

    Keras' ``_load_state`` walks the model and hands each object this store at its path;
    the object's own ``load_own_variables`` reads its values from it. Nothing is read
    from a file here, so nothing the file holds can fail the walk part-way.
    """
    from keras.src.saving import saving_lib

    class _ReadingStore(saving_lib.H5IOStore):
        def __init__(self, values: dict[str, dict[str, np.ndarray]]) -> None:
            self._all = values
            self._values: dict[str, np.ndarray] = {}

        def __bool__(self) -> bool:
            return True

        def get(self, path: str) -> Any:
            self._values = self._all.get(path, {})
            return self

        def has_path(self, path: str) -> bool:
            return any(p == path or p.startswith(path + "/") for p in self._all)

        def keys(self) -> Any:
            return self._values.keys()

        def __len__(self) -> int:
            return len(self._values)

        def __contains__(self, key: object) -> bool:
            return key in self._values

        def __getitem__(self, key: str) -> np.ndarray:
            return self._values[key]

        def close(self) -> None:
            pass

    return _ReadingStore


def write_weights(entries: dict[str, Any], target: Path) -> None:
    """Replay recorded entries into a Keras H5IOStore: the file save_weights would write."""
    store = writing_store_class()(target, mode="w")
    try:
        for inner_path, (metadata, values) in entries.items():
            store.make(inner_path, metadata=metadata)
            for key, value in values.items():
                store[key] = value
    finally:
        store.close()
