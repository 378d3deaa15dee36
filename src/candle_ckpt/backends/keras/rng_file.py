"""``rng-state.json``: what ``save_weights`` leaves out and an exact resume needs.

The seed-generator states of the model's layers (Dropout & co.), Keras' global seed
generator, and the process-wide RNG states (Python, NumPy and, once torch is loaded or
Keras runs on it, torch's), the latter in the JSON fields of
:mod:`candle_ckpt.backends.rng`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ...errors import CheckpointCorruptError, CheckpointMismatchError
from .. import rng as global_rng

RNG_FILE = "rng-state.json"
RNG_FORMAT = 1


@dataclass(frozen=True)
class RngFile:
    """A checked ``rng-state.json``: nothing in it is set yet."""

    seed_generators: list[dict[str, Any]]  # array records, in the model's order
    keras_global: dict[str, Any] | None  # Keras' global seed generator's array record
    process: global_rng.GlobalRng


def seed_generators(model: Any) -> list[Any]:
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
    """torch, where something may draw from its generators: loaded, or Keras' backend."""
    if "torch" in sys.modules or keras.backend.backend() == "torch":
        import torch

        return torch
    return None


def capture(model: Any) -> dict[str, Any]:
    """The content of an ``rng-state.json`` for ``model``, now."""
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    state: dict[str, Any] = {"format": RNG_FORMAT}
    state["seed_generators"] = [
        dict(_array_record(sg.state), path=sg.state.path) for sg in seed_generators(model)
    ]
    gen = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    state["keras_global_seed_generator"] = None if gen is None else _array_record(gen.state)
    state.update(global_rng.to_json(global_rng.capture(_torch_module())))
    return state


def streams(state: dict[str, Any]) -> list[str]:
    """The RNG streams an rng-state.json holds (for the manifest and the log)."""
    names = [f"seed_generator:{r.get('path')}" for r in state.get("seed_generators") or []]
    names += [k for k, v in state.items() if k not in ("format", "seed_generators")
              and v is not None]
    return names


def read(path: Path, model: Any) -> RngFile:
    """Parse and check an rng-state.json against the model's seed generators.

    Raises:
        CheckpointMismatchError: its seed generators are not the model's.
        CheckpointCorruptError, ValueError, KeyError: the file is damaged.
    """
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or state.get("format") != RNG_FORMAT:
        raise CheckpointCorruptError(f"{path}: not an RNG state file of format {RNG_FORMAT}")
    saved = state.get("seed_generators") or []
    generators = seed_generators(model)
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
    keras_global = state.get("keras_global_seed_generator")
    if keras_global is not None:
        try:
            _array_from_record(keras_global)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise CheckpointCorruptError(
                f"{path}: a global RNG state is damaged: {err}") from None
    process = global_rng.from_json(state, str(path), _torch_module())
    return RngFile(saved, keras_global, process)


def apply(model: Any, rng: RngFile) -> tuple[int, list[str], list[str]]:
    """Set the model's seed generators and the global states of a checked file.

    Returns (the number of seed generators set, the global states restored, problems).
    """
    generators = seed_generators(model)
    for sg, record in zip(generators, rng.seed_generators, strict=True):
        sg.state.assign(_array_from_record(record).astype(
            keras.backend.standardize_dtype(sg.state.dtype)))
    restored, problems = apply_global(rng)
    return len(generators), restored, problems


def apply_global(rng: RngFile) -> tuple[list[str], list[str]]:
    """Set the global states of a checked file: (what was restored, problems)."""
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR, global_seed_generator

    restored = []
    if rng.keras_global is not None:
        gen = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
        if gen is None:
            gen = global_seed_generator()
        gen.state.assign(_array_from_record(rng.keras_global).astype(gen.state.dtype))
        restored.append("keras global seed generator")
    process, problems = global_rng.restore(rng.process, _torch_module())
    return restored + process, problems
