"""Reading a ``.weights.h5`` against the live model: every value Keras' load walk will ask
for, read and checked (names, shapes, dtypes) before anything live changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from ...errors import CheckpointCorruptError, CheckpointMismatchError
from . import h5
from .stores import Values, capture_weights


def read_weights(model: Any, path: Path, skip: list[Any]) -> Values:
    """Every value Keras' load walk will ask for, read from ``path`` and checked.

    The live walk (the one ``save_weights`` makes) names the variables; each must be in
    the file under the same path and key with the same shape and dtype, else
    :class:`CheckpointMismatchError` naming the first. What Keras' loader would refuse
    is :class:`CheckpointCorruptError` (see ``h5``). Shapes are compared before
    any data is read; nothing live is changed.
    """
    live = capture_weights(model, skip, share=True)
    with h5.open_file(path) as f:
        planned: list[tuple[str, str, Any, h5.Spec]] = []
        for inner_path, (_, values) in live.items():
            where = inner_path or "(top level)"
            group = h5.member(f, f"{inner_path}/vars" if inner_path else "vars",
                                    "group", path)
            saved = h5.keys(group, path) if group is not None else set()
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
                dataset = h5.member(group, key, "dataset", path)
                spec = h5.describe(dataset, path)
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
            out.setdefault(inner_path, {})[key] = h5.read(dataset, spec, path)
    return out


def read_optimizer_vars(path: Path) -> list[np.ndarray] | None:
    """The optimizer variables a ``.weights.h5`` holds, in the optimizer's order."""
    with h5.open_file(path) as f:
        group = h5.member(f, "optimizer/vars", "group", path)
        if group is None:
            return None
        saved = h5.keys(group, path)
        if saved != {str(i) for i in range(len(saved))}:
            raise CheckpointCorruptError(
                f"{path}: {group.name} holds {sorted(saved)[:6]}, not the variables 0.."
                f"{len(saved) - 1} an optimizer writes")
        datasets = [h5.member(group, str(i), "dataset", path) for i in range(len(saved))]
        specs = [h5.describe(d, path) for d in datasets]
        return [h5.read(d, spec, path) for d, spec in zip(datasets, specs, strict=True)]
