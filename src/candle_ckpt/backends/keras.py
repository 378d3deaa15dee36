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

from ..backend import Restored, Written
from ..engine import CandleCkpt, read_info_json
from ..errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointRestoreError,
    CkptParamError,
    MetricNotFoundError,
)
from ..logs import CkptLog
from ..storage.integrity import safe_member
from ..storage.sink import FileSink
from . import keras_h5

MODEL_FILE = "model.weights.h5"
RNG_FILE = "rng-state.json"
LEGACY_MODEL_FILE = "model.h5"
_RNG_FORMAT = 1



# ------------------------------------------------------------------------ capture
@dataclass
class KerasSnapshot:
    """Host-memory copy of everything a checkpoint holds."""

    weights: dict[str, tuple[dict[str, Any] | None, dict[str, np.ndarray]]] | None
    weights_file_bytes: bytes | None  # fallback when Keras' saving walk is unavailable
    rng: dict[str, Any] = field(default_factory=dict)
    has_optimizer: bool = False
    optimizer_type: str | None = None


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
    optimizer = _stock_optimizer(model, skip)
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


def _stock_optimizer(model: Any, skip: list[Any]) -> Any:
    """The model's optimizer when Keras saves it the stock way (so we may record it)."""
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or any(o is optimizer for o in skip) \
            or not isinstance(optimizer, BaseOptimizer) or not isinstance(optimizer.name, str) \
            or type(optimizer).save_own_variables is not BaseOptimizer.save_own_variables:
        return None
    return optimizer


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


def _reading_store_class() -> type:
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
    # On the torch backend with tensors on a GPU, unseeded ops (Dropout) draw from the
    # CUDA generators, one per device: save them all once CUDA is in use.
    state["torch_cuda_random"] = None
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda_random"] = [base64.b64encode(s.cpu().numpy().tobytes()).decode(
            "ascii") for s in torch.cuda.get_rng_state_all()]
    return state


def _check_global_rng(state: dict[str, Any], path: Path) -> None:
    """Raise CheckpointCorruptError unless the global RNG records can all be applied."""
    try:
        py = state.get("python_random")
        if py is not None:
            random.Random().setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        npr = state.get("numpy_random")
        if npr is not None:
            np.random.RandomState().set_state((
                npr["bit_generator"], np.array(npr["key"], dtype=np.uint32), npr["pos"],
                npr["has_gauss"], npr["cached_gaussian"]))
        gen_state = state.get("keras_global_seed_generator")
        if gen_state is not None:
            _array_from_record(gen_state)
        torch = _torch_module()
        raw = state.get("torch_random")
        if raw is not None and torch is not None and \
                len(base64.b64decode(raw)) != torch.get_rng_state().numel():
            raise ValueError("torch_random has the wrong size")
        cuda = state.get("torch_cuda_random")
        if cuda is not None and not (isinstance(cuda, list) and all(
                isinstance(c, str) and base64.b64decode(c) for c in cuda)):
            raise ValueError("torch_cuda_random is not a list of generator states")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointCorruptError(f"{path}: a global RNG state is damaged: {err}") from None


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
    cuda = state.get("torch_cuda_random")
    if cuda and torch is not None and torch.cuda.is_available() \
            and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.frombuffer(
            base64.b64decode(c), dtype=np.uint8).copy()) for c in cuda])
        restored.append(f"torch CUDA random ({len(cuda)} device(s))")
    return restored


# ------------------------------------------------------------------------ reading a file
Values = dict[str, dict[str, np.ndarray]]  # inner path -> variable key -> value


def _read_weights(model: Any, path: Path, skip: list[Any]) -> Values:
    """Every value Keras' load walk will ask for, read from ``path`` and checked.

    The live walk (the one ``save_weights`` makes) names the variables; each must be in
    the file under the same path and key with the same shape and dtype, else
    :class:`CheckpointMismatchError` naming the first. What Keras' loader would refuse
    is :class:`CheckpointCorruptError` (see ``keras_h5``). Shapes are compared before
    any data is read; nothing live is changed.
    """
    live = _capture_weights(model, skip, share=True)
    with keras_h5.open_file(path) as f:
        planned: list[tuple[str, str, Any, keras_h5.Spec]] = []
        for inner_path, (_, values) in live.items():
            where = inner_path or "(top level)"
            group = keras_h5.member(f, f"{inner_path}/vars" if inner_path else "vars",
                                    "group", path)
            saved = keras_h5.keys(group, path) if group is not None else set()
            if not values and not saved:
                continue
            if not values:
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the model: it holds variables "
                    f"{sorted(saved)[:6]} for {where!r}, where the model has none"
                )
            if group is None:
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the model: it has no variables for {where!r}; "
                    "is this the same model and optimizer?"
                )
            if saved != set(values):
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the model: {where!r} holds variables "
                    f"{sorted(saved)[:6]} in the checkpoint, {sorted(values)[:6]} in the model"
                )
            for key, array in values.items():
                dataset = keras_h5.member(group, key, "dataset", path)
                spec = keras_h5.describe(dataset, path)
                live_dtype = keras.backend.standardize_dtype(array.dtype)
                if spec.shape != tuple(array.shape) or spec.dtype != live_dtype:
                    raise CheckpointMismatchError(
                        f"{path.name} does not fit the model: {where}/{key} is "
                        f"{spec.shape} {spec.dtype} in the checkpoint, "
                        f"{tuple(array.shape)} {live_dtype} in the model"
                    )
                planned.append((inner_path, key, dataset, spec))
        out: Values = {}
        for inner_path, key, dataset, spec in planned:
            out.setdefault(inner_path, {})[key] = keras_h5.read(dataset, spec, path)
    return out


def _read_optimizer_vars(path: Path) -> list[np.ndarray] | None:
    """The optimizer variables a ``.weights.h5`` holds, in the optimizer's order."""
    with keras_h5.open_file(path) as f:
        group = keras_h5.member(f, "optimizer/vars", "group", path)
        if group is None:
            return None
        saved = keras_h5.keys(group, path)
        if saved != {str(i) for i in range(len(saved))}:
            raise CheckpointCorruptError(
                f"{path}: {group.name} holds {sorted(saved)[:6]}, not the variables 0.."
                f"{len(saved) - 1} an optimizer writes")
        datasets = [keras_h5.member(group, str(i), "dataset", path) for i in range(len(saved))]
        specs = [keras_h5.describe(d, path) for d in datasets]
        return [keras_h5.read(d, spec, path) for d, spec in zip(datasets, specs, strict=True)]


@dataclass
class _LegacyWeights:
    """What an original CANDLE ``model.h5`` holds, read and checked against the model."""

    layers: list[tuple[Any, list[Any], list[np.ndarray]]]  # (layer, variables, values)
    optimizer: list[np.ndarray] | None


def _legacy_variables(layer: Any) -> list[Any]:
    """A layer's variables in the order legacy HDF5 files keep them (Keras' own rule)."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _read_legacy_weights(model: Any, path: Path) -> _LegacyWeights:
    """Read a legacy ``model.h5`` as Keras' ``load_weights`` pairs it with the model.

    Layer by layer in file order (layers without weights left out on both sides), then
    the model's own variables (``top_level_model_weights``) and the optimizer's.
    Raises CheckpointMismatchError where the shapes do not fit (compared before reading
    the data), CheckpointCorruptError where the file is damaged (a name listed in
    ``layer_names``/``weight_names`` that is missing, links, external data...).
    """
    with keras_h5.open_file(path) as f:
        group = f
        if "layer_names" not in f.attrs:  # model.save() keeps the weights one level down
            weights = keras_h5.member(f, "model_weights", "group", path)
            group = f if weights is None else weights
        saved: list[tuple[str, list[tuple[Any, keras_h5.Spec]]]] = []
        for name in keras_h5.names(group, "layer_names", path):
            datasets = _legacy_datasets(group, name, path)
            if datasets:
                saved.append((name, datasets))
        top = None
        if keras_h5.member(group, "top_level_model_weights", "group", path) is not None:
            top = _legacy_datasets(group, "top_level_model_weights", path)
        live_layers = [layer for layer in model.layers if _legacy_variables(layer)]
        pairs: list[tuple[Any, list[Any], list[tuple[Any, keras_h5.Spec]]]] = []
        flat_saved: list[tuple[int, ...]] = []
        flat_live: list[tuple[int, ...]] = []
        for (_, datasets), layer in zip(saved, live_layers, strict=False):
            variables = _legacy_variables(layer)
            flat_saved += [spec.shape for _, spec in datasets]
            flat_live += [tuple(v.shape) for v in variables]
            pairs.append((layer, variables, datasets))
        for _, datasets in saved[len(live_layers):]:
            flat_saved += [spec.shape for _, spec in datasets]
        for layer in live_layers[len(saved):]:
            flat_live += [tuple(v.shape) for v in _legacy_variables(layer)]
        if flat_saved != flat_live:
            first = next((i for i, (a, b) in enumerate(zip(flat_saved, flat_live,
                                                               strict=False)) if a != b),
                         min(len(flat_saved), len(flat_live)))
            raise CheckpointMismatchError(
                f"{path.name} does not fit the model: weight {first} is "
                f"{flat_saved[first] if first < len(flat_saved) else 'missing'} in the "
                f"checkpoint, {flat_live[first] if first < len(flat_live) else 'missing'} in "
                f"the model ({len(flat_saved)} vs {len(flat_live)} weights)")
        for (name, datasets), (layer, variables, _) in zip(saved, pairs, strict=True):
            if len(datasets) != len(variables):
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the model: layer {name!r} has {len(datasets)} "
                    f"weights in the checkpoint, {layer.name!r} has {len(variables)}")
        own = list(getattr(model, "_trainable_variables", [])) + \
            list(getattr(model, "_non_trainable_variables", []))
        if top is not None:
            if [spec.shape for _, spec in top] != [tuple(v.shape) for v in own]:
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the model: its top-level weights are "
                    f"{[spec.shape for _, spec in top]}, the model's "
                    f"{[tuple(v.shape) for v in own]}")
            pairs.append((model, own, top))
        for _, variables, datasets in pairs:
            for variable, (dataset, spec) in zip(variables, datasets, strict=True):
                _check_castable(spec, variable, dataset, path)
        optimizer_datasets = None
        if keras_h5.member(f, "optimizer_weights", "group", path) is not None:
            optimizer_datasets = _legacy_datasets(f, "optimizer_weights", path)
        layers = [(layer, variables,
                   [keras_h5.read(d, spec, path).astype(
                       keras.backend.standardize_dtype(v.dtype), copy=False)
                    for v, (d, spec) in zip(variables, datasets, strict=True)])
                  for layer, variables, datasets in pairs]
        optimizer = None if optimizer_datasets is None else \
            [keras_h5.read(d, spec, path) for d, spec in optimizer_datasets]
    return _LegacyWeights(layers, optimizer)


def _legacy_datasets(group: Any, name: str, path: Path) -> list[tuple[Any, keras_h5.Spec]]:
    """The datasets a legacy group's ``weight_names`` lists, in order, described."""
    sub = keras_h5.member(group, name, "group", path)
    if sub is None:
        raise CheckpointCorruptError(f"{path}: {group.name} lists {name!r}, which is missing")
    out = []
    for wname in keras_h5.names(sub, "weight_names", path):
        dataset = keras_h5.member(sub, wname, "dataset", path)
        if dataset is None:
            raise CheckpointCorruptError(
                f"{path}: {sub.name} lists weight {wname!r}, which is missing")
        out.append((dataset, keras_h5.describe(dataset, path)))
    return out


def _check_castable(spec: keras_h5.Spec, variable: Any, dataset: Any, path: Path) -> None:
    """Legacy weights are cast to the variable's dtype, as Keras' assign does; refuse what
    that would mangle (a float into an integer variable, a complex into a float one)."""
    target = keras.backend.standardize_dtype(variable.dtype)
    if spec.dtype == target or spec.dtype == "bfloat16" or target == "bfloat16":
        return
    if not np.can_cast(np.dtype(spec.dtype), np.dtype(target), casting="same_kind"):
        raise CheckpointMismatchError(
            f"{path.name} does not fit the model: {dataset.name} is {spec.dtype}, "
            f"{variable.path} is {target}")


def _read_rng(path: Path, model: Any) -> dict[str, Any]:
    """Parse and check an rng-state.json against the model's seed generators."""
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or state.get("format") != _RNG_FORMAT:
        raise CheckpointCorruptError(f"{path}: not an RNG state file of format {_RNG_FORMAT}")
    saved = state.get("seed_generators") or []
    generators = _seed_generators(model)
    if not isinstance(saved, list) or len(saved) != len(generators):
        raise CheckpointMismatchError(
            f"{path.name}: holds {len(saved) if isinstance(saved, list) else 0} seed-generator "
            f"states, the model has {len(generators)}; is this the same model?"
        )
    for sg, record in zip(generators, saved, strict=True):
        value = _array_from_record(record)  # raises on a damaged record
        if tuple(value.shape) != tuple(sg.state.shape):
            raise CheckpointMismatchError(
                f"{path.name}: seed generator {sg.state.path} is {tuple(value.shape)} in the "
                f"checkpoint, {tuple(sg.state.shape)} in the model"
            )
    _check_global_rng(state, path)
    return state


@dataclass
class _Deferred:
    """What restart could not apply before training begins (the optimizer may not exist).

    Kept per model, so a ``CandleCheckpointCallback`` built after a module-level
    ``restart()`` on the same model applies it at ``on_train_begin``.
    """

    rng: dict[str, Any] | None = None
    optimizer: list[np.ndarray] | None = None
    optimizer_type: str | None = None
    source: str = ""
    legacy: bool = False  # an original CANDLE model.h5: a misfit starts the optimizer fresh


# Per model: what the callback applies when training begins.
_deferred: weakref.WeakKeyDictionary[Any, _Deferred] = weakref.WeakKeyDictionary()


class KerasBackend:
    """The backend protocol for a Keras 3 model (any of its backends)."""

    name = "keras"

    def __init__(self, log: CkptLog, weights_only: bool) -> None:
        self.log = log
        self.weights_only = weights_only
        self.model: Any = None
        # The arrays of the last capture: the next one copies into them (the engine
        # captures only when no save is in flight), so memory stays at one extra copy.
        self.buffers: Entries | None = None

    def require_model(self) -> Any:
        if self.model is None:
            raise CkptParamError(
                "no model: call set_model(model) or restart(model), or pass the callback "
                "to model.fit()"
            )
        return self.model

    # --------------------------------------------------------------- saving
    def capture(self, live: bool) -> KerasSnapshot:
        """The weights (copies, or with ``live`` views where the backend allows) and RNGs."""
        model = self.require_model()
        if not model.built:
            raise CkptParamError("the model is not built; build it (or call it once) first")
        if hasattr(model, "jax_state_sync"):
            # Inside a jax epoch the trainer holds the state outside the variables (and
            # purges them); sync first, as Keras' own Callback.model does. A no-op between
            # epochs and on the other backends' models, which lack the method.
            model.jax_state_sync()
        optimizer = getattr(model, "optimizer", None)
        skip = [optimizer] if (self.weights_only and optimizer is not None) else []
        rng: dict[str, Any] = {"format": _RNG_FORMAT}
        rng["seed_generators"] = [
            dict(_array_record(sg.state), path=sg.state.path) for sg in _seed_generators(model)
        ]
        rng.update(_capture_global_rng())
        has_optimizer = optimizer is not None and not skip
        opt_type = type(optimizer).__name__ if has_optimizer else None
        try:
            entries = _capture_weights(model, skip, self.buffers, share=live)
            if not live:  # never keep views of live variables as buffers to copy into
                self.buffers = entries
            return KerasSnapshot(entries, None, rng, has_optimizer, opt_type)
        except (ImportError, AttributeError, TypeError, ValueError) as err:
            # Keras' internal saving walk changed: fall back to save_weights into memory.
            self.log.debug(f"recording store unavailable ({err}); using save_weights")
        from keras.src.saving import saving_lib

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            saving_lib.save_weights_only(model, str(path), objects_to_skip=skip or None)
            data = path.read_bytes()
        return KerasSnapshot(None, data, rng, has_optimizer, opt_type)

    def write(self, snapshot: KerasSnapshot, sink: FileSink) -> Written:
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
        return Written(MODEL_FILE, {
            "weights_only": bool(self.weights_only),
            "optimizer_state": snapshot.has_optimizer,
            "optimizer_type": snapshot.optimizer_type,
            "keras_version": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "rng_file": RNG_FILE,
            "rng_streams": _rng_streams(snapshot.rng),
        })

    # --------------------------------------------------------------- restoring
    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        """Check the weights, optimizer and RNG files against the model; change nothing."""
        model = self.require_model()
        if not model.built:
            raise CkptParamError(
                "the model is not built; build it (model.build(shape) or call it once) "
                "before restart so its weights can be loaded"
            )
        model_file = info.get("model_file") or LEGACY_MODEL_FILE
        if not safe_member(model_file) or model_file.startswith("."):
            raise CheckpointCorruptError(f"model_file {model_file!r} is not a file name")
        path = Path(directory) / model_file
        rng_name = info.get("rng_file") or RNG_FILE
        if not safe_member(rng_name) or rng_name.startswith("."):
            raise CheckpointCorruptError(f"rng_file {rng_name!r} is not a file name")
        rng_path = Path(directory) / rng_name
        notes: list[str] = []
        rng: dict[str, Any] | None = None
        if rng_path.is_file():
            rng = _read_rng(rng_path, model)
        elif "format_version" in info:
            raise CheckpointCorruptError(f"{rng_path}: missing")
        else:
            notes.append(f"{directory}: no RNG state (original CANDLE checkpoint); seed "
                         "generators keep their current state")
        if model_file.endswith(".weights.h5"):
            apply_weights = self._plan_native(model, path, info, notes)
        elif model_file.endswith((".h5", ".hdf5")):
            apply_weights = self._plan_legacy_h5(model, path)
        else:
            raise CheckpointCorruptError(
                f"{path}: model_file {model_file!r} is not a Keras weights file "
                "(.weights.h5 or legacy .h5)"
            )

        def apply() -> list[str]:
            # Everything was read and checked above, so only Keras itself can fail here
            # (a layer's own load_own_variables, a device out of memory): by then some
            # variables may hold this checkpoint's values. Say so rather than let restart
            # fall back or start from scratch over a model that is neither.
            try:
                problems = apply_weights()
                if rng is not None:
                    self._apply_rng(model, rng)
            except Exception as err:
                raise CheckpointRestoreError(
                    f"{path}: copying the checked values into the model failed part-way "
                    f"({type(err).__name__}: {err}); the model and its optimizer may hold "
                    "some of them: build them anew before restarting again"
                ) from err
            return problems

        return Restored(apply, notes)

    def _plan_native(self, model: Any, path: Path, info: dict[str, Any],
                     notes: list[str]) -> Any:
        """Read and check a ``.weights.h5`` whole; return the function that assigns it."""
        from keras.src.saving import saving_lib

        optimizer = getattr(model, "optimizer", None)
        weights_only = bool(info.get("weights_only")) or not info.get("optimizer_state", True)
        saved_type = info.get("optimizer_type")
        deferred: list[np.ndarray] | None = None
        skip: list[Any] = []
        if weights_only:
            if optimizer is not None:
                skip = [optimizer]
                notes.append(f"{path.name}: weights only; the optimizer starts fresh")
        elif optimizer is None:
            # Restart before compile() (NT3 does this): keep the state for on_train_begin.
            deferred = _read_optimizer_vars(path)
            notes.append(f"{path.name}: the model is not compiled yet; its optimizer state is "
                         "applied when training begins")
        else:
            if isinstance(saved_type, str) and saved_type != type(optimizer).__name__:
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the optimizer: it holds {saved_type} state, "
                    f"the model's optimizer is {type(optimizer).__name__}"
                )
            if not optimizer.built:
                # Keras skips an unbuilt optimizer's variables (with a mere warning).
                optimizer.build(model.trainable_variables)
        values = _read_weights(model, path, skip)

        def apply() -> list[str]:
            # Keras' own load walk (each layer's load_own_variables), fed from memory.
            saving_lib._load_state(
                model, weights_store=_reading_store_class()(values), assets_store=None,
                inner_path="", skip_mismatch=False,
                visited_saveables={id(o) for o in skip}, failed_saveables=None,
                error_msgs=None,
            )
            if deferred is not None:
                _deferred.setdefault(model, _Deferred()).optimizer = deferred
                _deferred[model].optimizer_type = saved_type if isinstance(saved_type, str) \
                    else None
                _deferred[model].source = str(path)
            return []

        return apply

    def _plan_legacy_h5(self, model: Any, path: Path) -> Any:
        """Read and check an original CANDLE ``model.h5`` (model.save); return what assigns it.

        The weights are paired with the model layer by layer, as Keras' legacy loader
        pairs them; a model that does not fit raises CheckpointMismatchError with nothing
        changed. Optimizer state that does not fit (another Keras version's layout, an
        optimizer never stepped) is left out with a warning, as before.
        """
        optimizer = getattr(model, "optimizer", None)
        legacy = _read_legacy_weights(model, path)
        values = legacy.optimizer
        fresh = None
        if values is not None and optimizer is not None:
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            shapes = [tuple(v.shape) for v in optimizer.variables]
            if [tuple(v.shape) for v in values] != shapes:
                # Not a reason to refuse the weights: the original saved Keras 2-era
                # layouts and unstepped optimizers too. Say so and start it fresh.
                fresh = (f"{path}: its optimizer state ({len(values)} variables) does not "
                         f"fit {type(optimizer).__name__} ({len(shapes)}); the optimizer "
                         "starts fresh")

        def apply() -> list[str]:
            for layer, variables, arrays in legacy.layers:
                for variable, array in zip(variables, arrays, strict=True):
                    variable.assign(array)
                if variables and hasattr(layer, "finalize_state"):  # as Keras' loader does
                    layer.finalize_state()
            if values is None:
                self.log.info(f"{path}: holds no optimizer state; the optimizer starts fresh")
            elif optimizer is None:
                pending = _deferred.setdefault(model, _Deferred())
                pending.optimizer, pending.source, pending.legacy = values, str(path), True
                self.log.info(f"{path}: the model is not compiled yet; its optimizer state "
                              "is applied when training begins")
            elif fresh is not None:
                return [fresh]
            else:
                optimizer.set_weights(values)
                self.log.info(f"{path}: restored weights and optimizer state "
                              f"({len(values)} variables)")
            return []

        return apply

    def _apply_rng(self, model: Any, state: dict[str, Any]) -> None:
        generators = _seed_generators(model)
        for sg, record in zip(generators, state.get("seed_generators") or [], strict=True):
            sg.state.assign(_array_from_record(record).astype(
                keras.backend.standardize_dtype(sg.state.dtype)))
        restored = _apply_global_rng(state)
        # fit() may draw from the global RNGs between restart and the first epoch.
        _deferred.setdefault(model, _Deferred()).rng = state
        self.log.debug(f"restored {len(generators)} seed generator(s) and "
                       f"{', '.join(restored) or 'no global RNG'}")

    # --------------------------------------------------------------- training begins
    def begin_training(self) -> None:
        """Apply what restart deferred: the optimizer state (validated), the global RNGs."""
        model = self.model
        pending = _deferred.get(model) if model is not None else None
        if pending is None:
            return
        if pending.optimizer is not None:
            # Raises on a mismatch; the state stays pending, so a retried fit() with a
            # fitting optimizer still gets it instead of silently starting fresh.
            self._apply_deferred_optimizer(model, pending)
        _deferred.pop(model, None)
        if pending.rng is not None:
            _apply_global_rng(pending.rng)
            self.log.debug("re-applied the checkpoint's global RNG states as training begins")

    def _apply_deferred_optimizer(self, model: Any, pending: _Deferred) -> None:
        optimizer = getattr(model, "optimizer", None)
        values = pending.optimizer or []
        if optimizer is None:
            self.log.warning(f"{pending.source}: the model has no optimizer when training "
                             "begins; the checkpoint's optimizer state is not restored")
            return
        if pending.optimizer_type is not None and \
                pending.optimizer_type != type(optimizer).__name__:
            raise CheckpointMismatchError(
                f"{pending.source} does not fit the optimizer: it holds "
                f"{pending.optimizer_type} state, the model's optimizer is "
                f"{type(optimizer).__name__}"
            )
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        variables = optimizer.variables
        if pending.legacy and [tuple(v.shape) for v in values] != \
                [tuple(v.shape) for v in variables]:
            self.log.warning(f"{pending.source}: its optimizer state ({len(values)} "
                             f"variables) does not fit {type(optimizer).__name__} "
                             f"({len(variables)}; another Keras version or an optimizer "
                             "never stepped); the optimizer starts fresh")
            return
        if len(values) != len(variables):
            raise CheckpointMismatchError(
                f"{pending.source} does not fit the optimizer: {len(values)} optimizer "
                f"variables in the checkpoint, {len(variables)} in "
                f"{type(optimizer).__name__}"
            )
        for variable, value in zip(variables, values, strict=True):
            if tuple(value.shape) != tuple(variable.shape):
                raise CheckpointMismatchError(
                    f"{pending.source} does not fit the optimizer: {variable.path} is "
                    f"{tuple(value.shape)} in the checkpoint, {tuple(variable.shape)} in "
                    "the optimizer"
                )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
        self.log.info(f"restored the optimizer state ({len(values)} variables) from "
                      f"{pending.source} as training begins")


def _rng_streams(rng: dict[str, Any]) -> list[str]:
    """The RNG streams an rng-state.json holds (for the manifest and the log)."""
    names = [f"seed_generator:{r.get('path')}" for r in rng.get("seed_generators") or []]
    names += [k for k, v in rng.items() if k not in ("format", "seed_generators")
              and v is not None]
    return names


# ------------------------------------------------------------------------ the callback
class CandleCkptKeras(keras.callbacks.Callback, CandleCkpt):
    """Keras callback that checkpoints per the CANDLE hyperparameters.

    Use::

        ckpt = CandleCkptKeras(gParameters)
        ckpt.set_model(model)
        J = ckpt.restart(model)
        initial_epoch = J["epoch"] if J else 0
        model.fit(..., initial_epoch=initial_epoch, callbacks=[ckpt])

    The model must be built before ``restart``. If it is compiled only afterwards (as
    NT3 does), the optimizer state is applied when training begins (``on_train_begin``),
    after checking the optimizer's type and variables: one that does not fit raises
    ``CheckpointMismatchError`` there, and the state stays pending.
    """

    backend_name = "keras"
    backend: KerasBackend

    def __init__(self, gParameters: Any = None, logger: Any = "DEFAULT",
                 verbose: bool = True) -> None:
        keras.callbacks.Callback.__init__(self)  # Keras 3: `model` is a read-only property
        CandleCkpt.__init__(self, gParameters, logger, verbose)

    def _new_backend(self) -> KerasBackend:
        return KerasBackend(self._log, bool(self.save_weights_only))

    def close(self) -> None:
        """Wait for a background save, release the directory and the capture buffers."""
        try:
            CandleCkpt.close(self)
        finally:
            backend = getattr(self, "backend", None)
            if isinstance(backend, KerasBackend):
                backend.buffers = None

    # --------------------------------------------------------------- model plumbing
    def set_model(self, model: Any) -> None:
        self._model = model
        self.backend.model = model

    def _attach_model(self, model: Any) -> None:
        self.set_model(model)

    def _is_model(self, obj: Any) -> bool:
        return isinstance(obj, keras.Model)

    def _has_model(self) -> bool:
        return self.backend.model is not None

    def capture_state(self) -> KerasSnapshot:
        """A host copy of everything a checkpoint holds (what an async save writes)."""
        return self.backend.capture(live=False)

    def restart(self, model: Any = None, verbose: Any = True) -> dict[str, Any] | None:
        """Restart from ``last`` per ckpt_restart_mode; the info dict, or None.

        ``restart()``, ``restart(model)``, ``restart(gParameters, model)`` and
        ``restart(gParameters)`` are accepted: the model passed is restored, else the one
        given to ``set_model`` (hyperparameters passed are not needed here and ignored).

        Raises:
            CkptParamError: no model is known, or it is not built (its weights could not
                be loaded, and silently starting from scratch would overwrite the run).
            CheckpointMismatchError: the checkpoint does not fit the model (nothing loaded).
        """
        model, verbose = self._restart_args(model, verbose)
        target = model if model is not None else self.backend.model
        if self.restart_mode != "off":
            if target is None:
                raise CkptParamError(
                    f"{type(self).__name__}.restart: no model; pass it (restart(model) or "
                    "restart(gParameters, model)) or call set_model(model) first, so its "
                    "checkpoint can be loaded"
                )
            if not target.built:
                raise CkptParamError(
                    "restart: the model is not built; give it an Input (or call "
                    "model.build(input_shape)) before restart so its weights can be loaded"
                )
        return CandleCkpt.restart(self, model, verbose)

    # --------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs: Any = None) -> None:
        self.backend.begin_training()
        self._epoch_in_progress = 0
        self._preempt.start()  # stop-signal handlers, from here to on_train_end

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch_in_progress = int(epoch)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """A stop signal or a time-based save is due: save mid-epoch (and stop)."""
        if self.ckpt_batch(getattr(self, "_epoch_in_progress", 0), batch):
            self.model.stop_training = True

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


class CandleCheckpointCallback(CandleCkptKeras):
    """The older ``ckpt_keras_utils`` callback: same engine, older method signatures.

    ``save_check(logs, epoch)`` and ``save_check_best(logs, epoch)`` take the epoch's
    logs and the 1-based epoch, as the original did.
    """

    def save_check(self, logs: Any, epoch: Any) -> bool:  # type: ignore[override]
        """Should the (1-based) epoch be saved, given its logs? Records a new best."""
        return CandleCkpt.save_check(self, int(epoch), self.direction.sign,
                                     self._metric_value(logs))

    def save_check_best(self, logs: Any, epoch: Any) -> bool:  # type: ignore[override]
        """Would the epoch's logs hold a new best (does not record it)?"""
        return CandleCkpt.save_check_best(self, int(epoch), self.direction.sign,
                                          self._metric_value(logs))


# ------------------------------------------------------------------------ module level
def restart(gParameters: Any, model: Any = None, verbose: bool = True) -> dict[str, Any] | None:
    """Restart ``model`` from the last checkpoint per gParameters (the older API).

    Raises:
        CkptParamError: ``model`` is not a Keras model, or it is not built (with
            ckpt_restart_mode "off", a missing or unbuilt model is not needed).

    Returns:
        The checkpoint's ckpt-info.json dict (``J["epoch"]`` is the ``initial_epoch``),
        or None when there was nothing to restart from.
    """
    ckpt = _RestartOnly(gParameters, verbose=verbose)
    try:
        return ckpt.restart(model, verbose)
    finally:
        ckpt.close()


class _RestartOnly(CandleCkptKeras):
    """The engine of a module-level restart(): it does not report a run of its own (the
    callback built afterwards does, so the console says "checkpointing into" once)."""

    _quiet_start = True


def restart_json(gParameters: Any, logger: Any, directory: Any) -> dict[str, Any]:
    """Read a checkpoint directory's ckpt-info.json."""
    info = read_info_json(directory)
    if hasattr(logger, "debug"):
        logger.debug(f"read {directory}: epoch {info.get('epoch')!r}")
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
