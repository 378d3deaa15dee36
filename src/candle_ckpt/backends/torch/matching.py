"""Reading a torch checkpoint file against the live objects: every key, shape, dtype and
optimizer group checked, and a plan of what to restore, before anything is changed.

A file written by the original CANDLE code (no ``format`` key: weights, optimizer state
and ``epoch``/``loss`` only) is read too; it holds no RNG states.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointMismatchError
from .. import rng as global_rng
from .entries import REQUIRED, Entry, unwrap_module
from .files import FORMAT, FORMAT_VERSION, FORMAT_VERSION_OBJECTS
from .stream import MappedCheckpoint


@dataclass
class RestorePlan:
    """What a checkpoint file says to restore, checked before anything is changed."""

    model: dict[str, Any]
    optimizer: dict[str, Any] | None
    entries: dict[str, Any] = field(default_factory=dict)
    rng: global_rng.GlobalRng | None = None
    original_candle: bool = False  # written by the original CANDLE code
    notes: list[str] = field(default_factory=list)
    sharded: dict[str, Any] | None = None  # model/optimizer read with DCP
    mapped: MappedCheckpoint | None = None  # the model file, memory-mapped


def plan_restore(payload: Any, name: str, objects: dict[str, Any], entries: list[Entry],
                 sharded: bool = False) -> RestorePlan:
    """Check the file's ``payload`` against the live ``objects`` (the set_model dict) and
    their ``entries``; nothing is changed.

    Raises:
        CheckpointMismatchError: the file does not fit the model, optimizer or an entry.
        ValueError: the file is damaged or not a checkpoint.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"{name} holds a {type(payload).__name__}, not a checkpoint dict")
    ours = payload.get("format") == FORMAT
    if ours and payload.get("format_version") not in (FORMAT_VERSION, FORMAT_VERSION_OBJECTS):
        raise ValueError(f"{name}: format_version {payload.get('format_version')!r} "
                         f"is not supported (this candle-ckpt reads {FORMAT_VERSION} and "
                         f"{FORMAT_VERSION_OBJECTS})")
    if "model_state_dict" not in payload:
        raise ValueError(f"{name} has no 'model_state_dict' (keys: {list(payload)[:8]})")
    module = unwrap_module(objects["model"])
    model_sd = {} if sharded else match_model(module, payload["model_state_dict"], name)
    notes: list[str] = []
    optimizer_sd = payload.get("optimizer_state_dict")
    if sharded:
        pass  # model and optimizer are DCP's files, checked by dcp.plan_load
    elif optimizer_sd is None:
        notes.append(f"{name} holds no optimizer state; the optimizer starts afresh")
    else:
        match_optimizer(objects["optimizer"], optimizer_sd, payload.get("optimizer_type"),
                        name)
    saved = payload.get("entries") or {}
    if not isinstance(saved, dict):
        raise ValueError(f"{name}: 'entries' is a {type(saved).__name__}, expected a dict")
    states = {}
    for entry in entries:
        if entry.key in REQUIRED:
            continue
        if entry.key in saved:
            check_entry(entry, saved[entry.key], name)
            states[entry.key] = saved[entry.key]
        else:
            notes.append(f"{name} holds no state for {entry.key!r}; it is left as it is")
    unknown = sorted(set(saved) - {e.key for e in entries})
    if unknown:
        notes.append(f"{name} holds state for {', '.join(map(repr, unknown))}, which "
                     "set_model did not name; not restored")
    rng = payload.get("rng")
    checked_rng = None if rng is None else global_rng.from_torch_file(rng, name, torch)
    return RestorePlan(model_sd, optimizer_sd, states, checked_rng, original_candle=not ours,
                       notes=notes)


def match_model(module: nn.Module, state: Any, name: str) -> dict[str, Any]:
    """The saved model state, keys matched to ``module``, or ValueError saying why not."""
    if not isinstance(state, dict):
        raise ValueError(f"{name}: model_state_dict is a {type(state).__name__}")
    expected = module.state_dict()
    metadata = getattr(state, "_metadata", None)
    state = OrderedDict(state)  # a copy: the prefix is dropped from it, not from the file's
    if metadata is not None:
        state._metadata = metadata
    if state and not set(state) & set(expected) and all(
        isinstance(k, str) and k.startswith("module.") for k in state
    ):
        # Saved from a DataParallel/DDP wrapper by other code: drop the wrapper's prefix.
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "module.")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{name} does not fit the model: missing {few(missing)}, unexpected "
            f"{few(unexpected)}"
        )
    for key, value in expected.items():
        got = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        if not isinstance(got, torch.Tensor) or got.shape != value.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointMismatchError(
                f"{name} does not fit the model: {key} is {shape} in the checkpoint, "
                f"{tuple(value.shape)} in the model"
            )
        if got.dtype != value.dtype:
            raise CheckpointMismatchError(
                f"{name} does not fit the model: {key} is {got.dtype} in the checkpoint, "
                f"{value.dtype} in the model"
            )
    return state


def type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def match_optimizer(optimizer: Any, saved: Any, saved_type: Any, name: str) -> None:
    """Raise unless ``saved`` (an optimizer state_dict) can be loaded into ``optimizer``.

    Checked: the optimizer's type (when the checkpoint records it), the parameter groups
    and their sizes, and that every per-parameter state tensor has its parameter's shape.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise ValueError(f"{name}: optimizer_state_dict is not an optimizer state "
                         "(needs 'state' and 'param_groups')")
    live_type = type_name(type(optimizer))
    if isinstance(saved_type, str) and saved_type != live_type:
        raise CheckpointMismatchError(
            f"{name} does not fit the optimizer: it holds {saved_type} state, the "
            f"optimizer is {live_type}"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        return  # another object with state_dict(): its own load_state_dict checks
    groups = optimizer.param_groups
    saved_groups = saved["param_groups"]
    if len(saved_groups) != len(groups):
        raise CheckpointMismatchError(
            f"{name} does not fit the optimizer: {len(saved_groups)} parameter group(s) in "
            f"the checkpoint, {len(groups)} in the optimizer"
        )
    params: dict[Any, torch.Tensor] = {}
    for i, (group, live) in enumerate(zip(saved_groups, groups, strict=True)):
        ids = group.get("params") if isinstance(group, dict) else None
        if not isinstance(ids, list):
            raise ValueError(f"{name}: optimizer param_groups[{i}] has no 'params' list")
        if len(ids) != len(live["params"]):
            raise CheckpointMismatchError(
                f"{name} does not fit the optimizer: parameter group {i} has {len(ids)} "
                f"parameters in the checkpoint, {len(live['params'])} in the optimizer"
            )
        params.update(zip(ids, live["params"], strict=True))
    for pid, state in saved["state"].items():
        if pid not in params:
            raise CheckpointMismatchError(
                f"{name} does not fit the optimizer: state for parameter {pid!r}, which no "
                "parameter group names"
            )
        if not isinstance(state, dict):
            raise ValueError(f"{name}: optimizer state[{pid!r}] is a {type(state).__name__}")
        param = params[pid]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 \
                    and value.shape != param.shape:
                raise CheckpointMismatchError(
                    f"{name} does not fit the optimizer: state[{pid!r}][{key!r}] is "
                    f"{tuple(value.shape)} in the checkpoint, its parameter is "
                    f"{tuple(param.shape)}"
                )


def check_entry(entry: Entry, state: Any, name: str) -> None:
    """Raise unless a saved ``set_model`` entry's state can be loaded into it."""
    where = f"{name}: state of {entry.key!r}"
    if entry.kind == "torch_generator":
        live = entry.obj.get_state()
        if not isinstance(state, torch.Tensor) or state.dtype != live.dtype \
                or state.shape != live.shape:
            raise ValueError(f"{where} is not a torch.Generator state")
    elif entry.kind == "python_random":
        if not isinstance(state, (list, tuple)) or len(state) != 3:
            raise ValueError(f"{where} is not a random.Random state")
    elif entry.kind == "numpy_generator":
        live_name = entry.obj.bit_generator.state.get("bit_generator")
        if not isinstance(state, dict) or state.get("bit_generator") != live_name:
            raise CheckpointMismatchError(
                f"{where} is not a {live_name} bit generator state")
    elif isinstance(entry.obj.state_dict(), dict) and not isinstance(state, dict):
        raise ValueError(f"{where} is a {type(state).__name__}, expected a dict")
    elif isinstance(entry.obj, torch.optim.Optimizer):
        match_optimizer(entry.obj, state, None, f"{name} ({entry.key!r})")


def few(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")

