"""The original CANDLE's Keras checkpoint: a legacy HDF5 ``model.h5`` (``model.save``),
read as Keras' own legacy loader pairs it with the model, checked before anything is
assigned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ...errors import CheckpointCorruptError, CheckpointMismatchError
from . import h5


@dataclass
class LegacyWeights:
    """What an original CANDLE ``model.h5`` holds, read and checked against the model."""

    layers: list[tuple[Any, list[Any], list[np.ndarray]]]  # (layer, variables, values)
    optimizer: list[np.ndarray] | None


def _legacy_variables(layer: Any) -> list[Any]:
    """A layer's variables in the order legacy HDF5 files keep them (Keras' own rule)."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def read_legacy_weights(model: Any, path: Path) -> LegacyWeights:
    """Read a legacy ``model.h5`` as Keras' ``load_weights`` pairs it with the model.

    Layer by layer in file order (layers without weights left out on both sides), then
    the model's own variables (``top_level_model_weights``) and the optimizer's.
    Raises CheckpointMismatchError where the shapes do not fit (compared before reading
    the data), CheckpointCorruptError where the file is damaged (a name listed in
    ``layer_names``/``weight_names`` that is missing, links, external data...).
    """
    with h5.open_file(path) as f:
        group = f
        if "layer_names" not in f.attrs:  # model.save() keeps the weights one level down
            weights = h5.member(f, "model_weights", "group", path)
            group = f if weights is None else weights
        saved: list[tuple[str, list[tuple[Any, h5.Spec]]]] = []
        for name in h5.names(group, "layer_names", path):
            datasets = _legacy_datasets(group, name, path)
            if datasets:
                saved.append((name, datasets))
        top = None
        if h5.member(group, "top_level_model_weights", "group", path) is not None:
            top = _legacy_datasets(group, "top_level_model_weights", path)
        live_layers = [layer for layer in model.layers if _legacy_variables(layer)]
        pairs: list[tuple[Any, list[Any], list[tuple[Any, h5.Spec]]]] = []
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
        if h5.member(f, "optimizer_weights", "group", path) is not None:
            optimizer_datasets = _legacy_datasets(f, "optimizer_weights", path)
        layers = [(layer, variables,
                   [h5.read(d, spec, path).astype(
                       keras.backend.standardize_dtype(v.dtype), copy=False)
                    for v, (d, spec) in zip(variables, datasets, strict=True)])
                  for layer, variables, datasets in pairs]
        optimizer = None if optimizer_datasets is None else \
            [h5.read(d, spec, path) for d, spec in optimizer_datasets]
    return LegacyWeights(layers, optimizer)


def _legacy_datasets(group: Any, name: str, path: Path) -> list[tuple[Any, h5.Spec]]:
    """The datasets a legacy group's ``weight_names`` lists, in order, described."""
    sub = h5.member(group, name, "group", path)
    if sub is None:
        raise CheckpointCorruptError(f"{path}: {group.name} lists {name!r}, which is missing")
    out = []
    for wname in h5.names(sub, "weight_names", path):
        dataset = h5.member(sub, wname, "dataset", path)
        if dataset is None:
            raise CheckpointCorruptError(
                f"{path}: {sub.name} lists weight {wname!r}, which is missing")
        out.append((dataset, h5.describe(dataset, path)))
    return out


def _check_castable(spec: h5.Spec, variable: Any, dataset: Any, path: Path) -> None:
    """Legacy weights are cast to the variable's dtype, as Keras' assign does; refuse what
    that would mangle (a float into an integer variable, a complex into a float one)."""
    target = keras.backend.standardize_dtype(variable.dtype)
    if spec.dtype == target or spec.dtype == "bfloat16" or target == "bfloat16":
        return
    if not np.can_cast(np.dtype(spec.dtype), np.dtype(target), casting="same_kind"):
        raise CheckpointMismatchError(
            f"{path.name} does not fit the model: {dataset.name} is {spec.dtype}, "
            f"{variable.path} is {target}")
