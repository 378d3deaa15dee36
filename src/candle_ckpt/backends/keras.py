"""The Keras 3 backend: ``CandleCkptKeras``, ``CandleCheckpointCallback``, ``restart()``.

A checkpoint is two files:

- ``model.weights.h5``: every variable Keras' own ``save_weights`` walks (layers, then the
  optimizer unless ``ckpt_save_weights_only``), in exactly Keras' layout, so plain
  ``model.load_weights()`` reads it;
- ``rng-state.json``: what ``save_weights`` leaves out and an exact resume needs: the
  seed-generator states (Dropout & co.), Keras' global seed generator, and the Python,
  NumPy and (on the torch backend) torch global RNG states.

Capturing walks the model with Keras' own saving walk into a store that keeps numpy
copies, so the snapshot never references live variables and can be written later on
another thread. Loading never deserializes a model (no ``load_model``): it reads
weights into the user's model, so nothing in a file can run code.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..commit import FileSink
from ..engine import CandleCkpt
from ..errors import CheckpointCorruptError, CkptParamError, MetricNotFoundError
from ..layout import INFO_FILE, read_info_file

MODEL_FILE = "model.weights.h5"
RNG_FILE = "rng-state.json"
LEGACY_MODEL_FILE = "model.h5"
_RNG_FORMAT = 1

# Global RNG states restored by a module-level restart(), re-applied by the callback when
# training begins (fit() itself may draw from them between restart and the first epoch).
_pending_rng: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------ capture
@dataclass
class KerasSnapshot:
    """Host-memory copy of everything a checkpoint holds."""

    weights: dict[str, tuple[dict[str, Any] | None, dict[str, np.ndarray]]] | None
    weights_file_bytes: bytes | None  # fallback when Keras' saving walk is unavailable
    rng: dict[str, Any] = field(default_factory=dict)
    has_optimizer: bool = False


Entries = dict[str, tuple[dict[str, Any] | None, dict[str, np.ndarray]]]


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


def _host_array(value: Any, into: Any) -> np.ndarray:
    """A host copy of a variable, written into ``into`` (an earlier copy) when it fits."""
    source = _live_array(value)
    if (type(into) is np.ndarray and into.shape == source.shape
            and into.dtype == source.dtype and into.flags.writeable
            and not np.may_share_memory(into, source)):
        np.copyto(into, source)
        return into
    return np.array(source, copy=True)


def _recording_store_class() -> type:
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
            self.entries[self._path][1][key] = _host_array(value, into)

        def __len__(self) -> int:
            return len(self.entries.get(self._path, (None, {}))[1])

        def keys(self) -> Any:
            return self.entries.get(self._path, (None, {}))[1].keys()

        def close(self) -> None:
            pass

    return _RecordingStore


def _capture_weights(model: Any, skip: list[Any], previous: Entries | None = None,
                     share: bool = False) -> Entries:
    """Record every variable Keras' save_weights walks: copies, or live views (share)."""
    from keras.src.saving import saving_lib

    store = _recording_store_class()(previous, share)
    saving_lib._save_state(
        model, weights_store=store, assets_store=None, inner_path="",
        visited_saveables={id(o) for o in skip},
    )
    return store.entries


def _writing_store_class() -> type:
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


def _write_weights(entries: dict[str, Any], target: Path) -> None:
    """Replay recorded entries into a Keras H5IOStore: the file save_weights would write."""
    store = _writing_store_class()(target, mode="w")
    try:
        for inner_path, (metadata, values) in entries.items():
            store.make(inner_path, metadata=metadata)
            for key, value in values.items():
                store[key] = value
    finally:
        store.close()


def _seed_generators(model: Any) -> list[Any]:
    """Every seed generator of the model (Dropout, noise layers...), in a stable order."""
    found: list[Any] = []
    seen: set[int] = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for sg in getattr(layer, "_seed_generators", []) or []:
            if id(sg) not in seen:
                seen.add(id(sg))
                found.append(sg)
    return found


def _array_record(value: Any) -> dict[str, Any]:
    array = np.array(keras.ops.convert_to_numpy(value), copy=True)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "value": array.tolist()}


def _array_from_record(record: dict[str, Any]) -> np.ndarray:
    return np.array(record["value"], dtype=record["dtype"]).reshape(record["shape"])


def _torch_module() -> Any:
    if "torch" in sys.modules or keras.backend.backend() == "torch":
        import torch

        return torch
    return None


def _capture_global_rng() -> dict[str, Any]:
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    state: dict[str, Any] = {}
    gen = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    state["keras_global_seed_generator"] = None if gen is None else _array_record(gen.state)
    version, internal, gauss = random.getstate()
    state["python_random"] = {"version": version, "state": list(internal), "gauss_next": gauss}
    numpy_state: Any = np.random.get_state()
    name, key, pos, has_gauss, cached = numpy_state
    state["numpy_random"] = {"bit_generator": name, "key": key.tolist(), "pos": int(pos),
                             "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    torch = _torch_module()
    state["torch_random"] = None if torch is None else base64.b64encode(
        torch.get_rng_state().numpy().tobytes()).decode("ascii")
    return state


def _apply_global_rng(state: dict[str, Any]) -> list[str]:
    """Restore the global RNG states saved in a checkpoint; names what was restored."""
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR, global_seed_generator

    restored = []
    gen_state = state.get("keras_global_seed_generator")
    if gen_state is not None:
        gen = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
        if gen is None:
            gen = global_seed_generator()
        gen.state.assign(_array_from_record(gen_state).astype(gen.state.dtype))
        restored.append("keras global seed generator")
    py = state.get("python_random")
    if py is not None:
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        restored.append("python random")
    npr = state.get("numpy_random")
    if npr is not None:
        np.random.set_state((npr["bit_generator"], np.array(npr["key"], dtype=np.uint32),
                             npr["pos"], npr["has_gauss"], npr["cached_gaussian"]))
        restored.append("numpy random")
    torch_state = state.get("torch_random")
    torch = _torch_module() if torch_state is not None else None
    if torch is not None and torch_state is not None:
        raw = np.frombuffer(base64.b64decode(torch_state), dtype=np.uint8).copy()
        torch.set_rng_state(torch.from_numpy(raw))
        restored.append("torch random")
    return restored


# ------------------------------------------------------------------------ the callback
class CandleCkptKeras(keras.callbacks.Callback, CandleCkpt):
    """Keras callback that checkpoints per the CANDLE hyperparameters.

    Use::

        ckpt = CandleCkptKeras(gParameters)
        ckpt.set_model(model)
        J = ckpt.restart(model)
        initial_epoch = J["epoch"] if J else 0
        model.fit(..., initial_epoch=initial_epoch, callbacks=[ckpt])

    The model must be built (and compiled, for its optimizer state to be saved)
    before ``restart``.
    """

    backend_name = "keras"

    def __init__(self, gParameters: Any = None, logger: Any = "DEFAULT",
                 verbose: bool = True) -> None:
        keras.callbacks.Callback.__init__(self)  # Keras 3: `model` is a read-only property
        CandleCkpt.__init__(self, gParameters, logger, verbose)
        self._rng_to_apply: dict[str, Any] | None = None
        self._wrote_optimizer = False
        # The arrays of the last capture: the next one copies into them (the engine
        # captures only when no save is in flight), so memory stays at one extra copy.
        self._buffers: Entries | None = None

    def close(self) -> None:
        """Wait for a background save, release the directory and the capture buffers."""
        try:
            CandleCkpt.close(self)
        finally:
            self._buffers = None

    # --------------------------------------------------------------- model plumbing
    def set_model(self, model: Any) -> None:
        self._model = model

    def attach_model(self, model: Any) -> None:
        self.set_model(model)

    def _require_model(self) -> Any:
        model = getattr(self, "_model", None)
        if model is None:
            raise CkptParamError(
                f"{type(self).__name__}: no model; call set_model(model) or restart(model) "
                "or pass the callback to model.fit()"
            )
        return model

    def restart(self, model: Any = None, verbose: bool = True) -> dict[str, Any] | None:
        """Restart from ``last`` per ckpt_restart_mode; the info dict, or None.

        Raises:
            CkptParamError: the model is not built (its weights could not be loaded, and
                silently starting from scratch would hide that).
        """
        target = model if model is not None else getattr(self, "_model", None)
        if target is not None and self.restart_mode != "off" and not target.built:
            raise CkptParamError(
                "restart: the model is not built; give it an Input (or call "
                "model.build(input_shape)) before restart so its weights can be loaded"
            )
        return CandleCkpt.restart(self, model, verbose)

    # --------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs: Any = None) -> None:
        model = getattr(self, "_model", None)
        pending = self._rng_to_apply
        if pending is None and model is not None:
            pending = _pending_rng.pop(model, None)
        self._rng_to_apply = None
        if pending is not None:
            _apply_global_rng(pending)
            self.debug("re-applied the checkpoint's global RNG states as training begins")

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Checkpoint the (0-based) epoch just completed, per the policies."""
        self.ckpt_epoch(epoch, self.direction.sign, self._metric_value(logs))

    def on_train_end(self, logs: Any = None) -> None:
        CandleCkpt.on_train_end(self, logs)

    def _metric_value(self, logs: Any) -> Any:
        logs = logs or {}
        metric = self.save_best_metric
        if metric in logs:
            return logs[metric]
        if self.save_best:
            present = ", ".join(repr(k) for k in sorted(logs)) or "none"
            raise MetricNotFoundError(
                f"ckpt_save_best_metric={metric!r} is not in this epoch's logs; metrics "
                f"present: {present}. Set ckpt_save_best_metric to one of them (val_* "
                "metrics need validation data), or ckpt_save_best=False"
            )
        return None

    # --------------------------------------------------------------- backend hooks
    def state_metadata(self) -> dict[str, Any]:
        return {
            "weights_only": bool(self.save_weights_only),
            # What the files just written hold (set by write_state from its snapshot).
            "optimizer_state": self._wrote_optimizer,
            "keras_version": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "rng_file": RNG_FILE,
        }

    def capture_state(self) -> KerasSnapshot:
        """Copy the weights (into the previous capture's arrays) and the RNG states."""
        return self._capture(share=False)

    def live_state(self) -> KerasSnapshot:
        """For a sync save: views of the variables where the backend allows, no copy."""
        return self._capture(share=True)

    def _capture(self, share: bool) -> KerasSnapshot:
        model = self._require_model()
        if not model.built:
            raise CkptParamError("the model is not built; build it (or call it once) first")
        optimizer = getattr(model, "optimizer", None)
        skip = [optimizer] if (self.save_weights_only and optimizer is not None) else []
        rng: dict[str, Any] = {"format": _RNG_FORMAT}
        rng["seed_generators"] = [
            dict(_array_record(sg.state), path=sg.state.path) for sg in _seed_generators(model)
        ]
        rng.update(_capture_global_rng())
        try:
            entries = _capture_weights(model, skip, self._buffers, share)
            if not share:  # never keep views of live variables as buffers to copy into
                self._buffers = entries
            return KerasSnapshot(entries, None, rng, optimizer is not None and not skip)
        except (ImportError, AttributeError, TypeError, ValueError) as err:
            # Keras' internal saving walk changed: fall back to save_weights into memory.
            self.debug(f"recording store unavailable ({err}); using save_weights")
        from keras.src.saving import saving_lib

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            saving_lib.save_weights_only(model, str(path), objects_to_skip=skip or None)
            data = path.read_bytes()
        return KerasSnapshot(None, data, rng, optimizer is not None and not skip)

    def write_state(self, snapshot: KerasSnapshot, sink: FileSink) -> str:
        self._wrote_optimizer = snapshot.has_optimizer
        if snapshot.weights is not None:
            # By path, then re-read once for the checksum: building the HDF5 image in
            # memory and streaming it through sink.open measured ~40% slower (h5py's
            # writes into a BytesIO plus the copy out cost more than the re-read).
            _write_weights(snapshot.weights, sink.path(MODEL_FILE))
        else:
            assert snapshot.weights_file_bytes is not None
            with sink.open(MODEL_FILE) as f:
                f.write(snapshot.weights_file_bytes)
        with sink.open(RNG_FILE) as f:
            f.write(json.dumps(snapshot.rng, allow_nan=False).encode("utf-8"))
        return MODEL_FILE

    def load_state(self, directory: Path, info: dict[str, Any]) -> None:
        model = self._require_model()
        if not model.built:
            raise CkptParamError(
                "the model is not built; build it (model.build(shape) or call it once) "
                "before restart so its weights can be loaded"
            )
        model_file = info.get("model_file") or LEGACY_MODEL_FILE
        path = Path(directory) / model_file
        if model_file.endswith(".weights.h5"):
            self._load_native(model, path, info)
        elif model_file.endswith((".h5", ".hdf5")):
            self._load_legacy_h5(model, path)
        else:
            raise CheckpointCorruptError(
                f"{path}: model_file {model_file!r} is not a Keras weights file "
                "(.weights.h5 or legacy .h5)"
            )
        rng_path = Path(directory) / str(info.get("rng_file") or RNG_FILE)
        if rng_path.is_file():
            self._load_rng(model, rng_path)
        elif "format_version" in info:
            raise CheckpointCorruptError(f"{rng_path}: missing")
        else:
            self.info(f"{directory}: no RNG state (original CANDLE checkpoint); seed "
                      "generators keep their current state")

    def _load_native(self, model: Any, path: Path, info: dict[str, Any]) -> None:
        from keras.src.saving import saving_lib

        optimizer = getattr(model, "optimizer", None)
        weights_only = bool(info.get("weights_only")) or not info.get("optimizer_state", True)
        skip = None
        if optimizer is None:
            if not weights_only:
                self.warning(f"{path}: the model has no optimizer (not compiled); "
                             "the checkpoint's optimizer state is not restored")
        elif weights_only:
            skip = [optimizer]
            self.info(f"{path}: weights only; the optimizer starts fresh")
        elif not optimizer.built:
            # Keras skips the optimizer's variables (with a mere warning) if it is unbuilt.
            optimizer.build(model.trainable_variables)
        saving_lib.load_weights_only(model, str(path), objects_to_skip=skip)
        if optimizer is not None and skip is None:
            self._check_optimizer_loaded(optimizer, path)

    def _check_optimizer_loaded(self, optimizer: Any, path: Path) -> None:
        import h5py

        with h5py.File(path, "r") as f:
            group = f.get("optimizer/vars")
            saved = len(group) if group is not None else 0
            iterations = np.array(group["0"]) if group is not None and "0" in group else None
        if saved != len(optimizer.variables):
            raise CheckpointCorruptError(
                f"{path}: holds {saved} optimizer variables, the model's optimizer has "
                f"{len(optimizer.variables)}; is this the same model and optimizer?"
            )
        current = keras.ops.convert_to_numpy(optimizer.iterations)
        if iterations is not None and not np.array_equal(iterations, current):
            raise CheckpointCorruptError(f"{path}: optimizer state was not loaded")

    def _load_legacy_h5(self, model: Any, path: Path) -> None:
        """Original CANDLE ``model.h5`` (model.save): weights, then optimizer if present."""
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        model.load_weights(str(path))  # weights only; never deserializes the model
        optimizer = getattr(model, "optimizer", None)
        with h5py.File(path, "r") as f:
            if "optimizer_weights" not in f:
                self.info(f"{path}: holds no optimizer state; the optimizer starts fresh")
                return
            if optimizer is None:
                self.warning(f"{path}: holds optimizer state but the model is not "
                             "compiled; the optimizer state is not restored")
                return
            values = legacy_h5_format.load_optimizer_weights_from_hdf5_group(f)
            values = [np.array(v) for v in values]
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        try:
            optimizer.set_weights(values)
        except ValueError as err:
            self.warning(f"{path}: optimizer state does not fit this optimizer ({err}); "
                         "it starts fresh")
            return
        self.info(f"{path}: restored weights and optimizer state ({len(values)} variables)")

    def _load_rng(self, model: Any, path: Path) -> None:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != _RNG_FORMAT:
            raise CheckpointCorruptError(f"{path}: not an RNG state file of format "
                                         f"{_RNG_FORMAT}")
        saved = state.get("seed_generators") or []
        generators = _seed_generators(model)
        if len(saved) != len(generators):
            raise CheckpointCorruptError(
                f"{path}: holds {len(saved)} seed-generator states, the model has "
                f"{len(generators)}; is this the same model?"
            )
        for sg, record in zip(generators, saved, strict=True):
            sg.state.assign(_array_from_record(record).astype(
                keras.backend.standardize_dtype(sg.state.dtype)))
        restored = _apply_global_rng(state)
        self._rng_to_apply = state
        try:
            _pending_rng[model] = state
        except TypeError:
            pass
        self.debug(f"restored {len(generators)} seed generator(s) and "
                   f"{', '.join(restored) or 'no global RNG'}")


class CandleCheckpointCallback(CandleCkptKeras):
    """The older ``ckpt_keras_utils`` callback: same engine, older method signatures.

    ``save_check(logs, epoch)`` and ``save_check_best(logs, epoch)`` take the epoch's
    logs and the 1-based epoch, as the original did.
    """

    def save_check(self, logs: Any, epoch: Any, metric_value: Any = ...) -> bool:  # type: ignore[override]
        """Should the (1-based) epoch be saved, given its logs? Records a new best."""
        if metric_value is not ...:  # the engine's (epoch, direction, metric_value)
            return CandleCkpt.save_check(self, logs, epoch, metric_value)
        return CandleCkpt.save_check(self, int(epoch), self.direction.sign,
                                     self._metric_value(logs))

    def save_check_best(self, logs: Any, epoch: Any, metric_value: Any = ...) -> bool:  # type: ignore[override]
        """Would the epoch's logs hold a new best (does not record it)?"""
        if metric_value is not ...:
            return CandleCkpt.save_check_best(self, logs, epoch, metric_value)
        return CandleCkpt.save_check_best(self, int(epoch), self.direction.sign,
                                          self._metric_value(logs))


# ------------------------------------------------------------------------ module level
def restart(gParameters: Any, model: Any, verbose: bool = True) -> dict[str, Any] | None:
    """Restart ``model`` from the last checkpoint per gParameters (the older API).

    Returns:
        The checkpoint's ckpt-info.json dict (``J["epoch"]`` is the ``initial_epoch``),
        or None when there was nothing to restart from.
    """
    ckpt = CandleCkptKeras(gParameters, verbose=verbose)
    try:
        return ckpt.restart(model, verbose)
    finally:
        ckpt.close()


def restart_json(gParameters: Any, logger: Any, directory: Any) -> dict[str, Any]:
    """Read a checkpoint directory's ckpt-info.json."""
    path = Path(directory) / INFO_FILE
    try:
        info = read_info_file(path)
    except (OSError, ValueError) as err:
        raise CheckpointCorruptError(f"{path}: cannot be read: {err}") from err
    if hasattr(logger, "debug"):
        logger.debug(f"read {path}: epoch {info.get('epoch')}")
    return info


class MultiGPUCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that saves the template model of a multi-GPU wrapper.

    When the model's second-to-last layer is itself a Model (the old
    ``multi_gpu_model`` wrapping), that inner model is the one saved.
    """

    def __init__(self, filepath: Any, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto", save_freq: Any = "epoch", options: Any = None,
                 **kwargs: Any) -> None:
        if options is not None:
            raise CkptParamError(
                f"MultiGPUCheckpoint: options={options!r} is not supported by Keras 3's "
                "ModelCheckpoint; pass options=None"
            )
        super().__init__(filepath, monitor=monitor, verbose=verbose,
                         save_best_only=save_best_only, save_weights_only=save_weights_only,
                         mode=mode, save_freq=save_freq, **kwargs)

    def set_model(self, model: Any) -> None:
        layers = getattr(model, "layers", [])
        if len(layers) >= 2 and isinstance(layers[-2], keras.Model):
            model = layers[-2]
        super().set_model(model)


__all__ = [
    "CandleCkptKeras",
    "CandleCheckpointCallback",
    "MultiGPUCheckpoint",
    "restart",
    "restart_json",
    "MODEL_FILE",
    "RNG_FILE",
]
