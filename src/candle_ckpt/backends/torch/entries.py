"""What ``set_model`` names: each entry's kind, and how its state is read and set."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..rng import as_tuples

try:  # numpy is optional for torch; numpy Generator entries need it
    import numpy as _np
except ImportError:  # pragma: no cover - torch wheels normally bring numpy along
    _np = None  # type: ignore[assignment]

REQUIRED = ("model", "optimizer")


@dataclass
class Entry:
    """How one ``set_model`` entry is saved and restored."""

    key: str
    obj: Any
    kind: str  # "state_dict", "torch_generator", "python_random", "numpy_generator"


def unwrap_module(model: nn.Module) -> nn.Module:
    """The module whose parameters a wrapper trains (DataParallel, DDP, torch.compile)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    seen = 0
    while seen < 16:  # wrappers nest (DDP of a compiled module); never loop forever
        seen += 1
        if isinstance(model, (DataParallel, DistributedDataParallel)):
            model = cast(nn.Module, model.module)
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = cast(nn.Module, model._orig_mod)  # torch.compile's OptimizedModule
        else:
            break
    return model


def is_set_model_dict(obj: Any) -> bool:
    """A dict of what to checkpoint (``{"model": m, "optimizer": o}``), not gParameters
    (which may hold a "model" key too, naming one)."""
    return isinstance(obj, Mapping) and (
        isinstance(obj.get("model"), nn.Module)
        or isinstance(obj.get("optimizer"), torch.optim.Optimizer))


def entry_kind(obj: Any) -> str | None:
    """How an object's state is saved; None: it has none we can save."""
    if isinstance(obj, torch.Generator):
        return "torch_generator"
    if isinstance(obj, random.Random):
        return "python_random"
    if _np is not None and isinstance(obj, _np.random.Generator):
        return "numpy_generator"
    if callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    ):
        return "state_dict"
    return None


def entry_state(entry: Entry) -> Any:
    """The entry's live state (the model's without a wrapper's ``module.`` prefix)."""
    obj = entry.obj
    if entry.kind == "torch_generator":
        return obj.get_state()
    if entry.kind == "python_random":
        return obj.getstate()
    if entry.kind == "numpy_generator":
        return obj.bit_generator.state
    if entry.key == "model":
        return unwrap_module(obj).state_dict()  # no "module." prefix from wrappers
    return obj.state_dict()


def load_entry(entry: Entry, state: Any) -> None:
    """Set the entry's state (checked beforehand by ``matching.check_entry``)."""
    obj = entry.obj
    if entry.kind == "torch_generator":
        obj.set_state(state)
    elif entry.kind == "python_random":
        obj.setstate(as_tuples(state))
    elif entry.kind == "numpy_generator":
        obj.bit_generator.state = state
    else:
        obj.load_state_dict(state)
