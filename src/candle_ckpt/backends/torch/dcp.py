"""Sharded state (FSDP2 ``fully_shard``, DTensor) through torch.distributed.checkpoint.

When a model's state dict holds DTensors, no rank has the whole model: the model and
optimizer state are written with DCP (every rank its shards, ``__R_0.distcp``, rank 0
DCP's ``.metadata``, into ``work/`` itself: checkpoints are flat), read back with DCP
(which reshards to the world size of the restarted run), and everything else
(scheduler, other ``set_model`` entries, the RNG files) as for replicated state. DCP's
own save and load are collectives that fail on every rank alike; the backend calls them
before any rank-local step that could fail, so the ranks never wait in different
collectives.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointMismatchError

METADATA = ".metadata"  # DCP's names: this, and __<rank>_<n>.distcp shards


def is_sharded(module: nn.Module) -> bool:
    """Does the module's state dict hold DTensors (FSDP2, tensor parallel)?"""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: nothing is sharded
        return False
    return any(isinstance(v, DTensor) for v in module.state_dict().values())


def capture(module: nn.Module, optimizer: Any, copy_: bool) -> dict[str, Any]:
    """The sharded model and optimizer state (DCP's FQN-keyed form); copies with ``copy_``.

    A copy (for a background save) clones every shard where it lives; the live tensors
    may then change while the copy is written.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.utils._pytree import tree_map_only

    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    if copy_:
        state = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), state)
    return state


def save(state: dict[str, Any], directory: Path, group: Any, writer: bool) -> list[str]:
    """Write ``state`` with DCP into ``directory`` (a collective); rank 0: DCP's files.

    DCP returns on every rank only after all shards are written and rank 0 has written
    ``.metadata``, so rank 0 can name every shard of every rank.
    """
    import torch.distributed.checkpoint as dcp

    writer_ = dcp.FileSystemWriter(str(directory), sync_files=True)
    dcp.save(state, storage_writer=writer_, process_group=group)
    if not writer:
        return []
    return sorted(name for name in os.listdir(directory)
                  if name == METADATA or name.endswith(".distcp"))


def plan_load(directory: Path, module: nn.Module, optimizer: Any,
              group: Any) -> dict[str, Any]:
    """Read the sharded state into copies of the live state (a collective); nothing live
    changes (but see below).

    A fresh optimizer has no state for DCP to load into: DCP's ``get_state_dict``
    initializes it with one zero step. That is undone here if loading fails, so a
    failed restart leaves the optimizer as it was.

    Raises:
        CheckpointMismatchError: the checkpoint's keys or global shapes do not fit.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.utils._pytree import tree_map_only

    before = copy.deepcopy(optimizer.state_dict()) if not optimizer.state else None
    try:
        model_sd, optim_sd = get_state_dict(module, optimizer)
        target = tree_map_only(torch.Tensor, lambda t: t.detach().clone(),
                               {"model": model_sd, "optimizer": optim_sd})
        reader = dcp.FileSystemReader(str(directory))
        _match(reader.read_metadata(), target["model"], directory)
        dcp.load(target, storage_reader=reader, process_group=group)
    except BaseException:
        if before is not None:
            optimizer.load_state_dict(before)
        raise
    return target


def apply(module: nn.Module, optimizer: Any, loaded: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(module, optimizer, model_state_dict=loaded["model"],
                   optim_state_dict=loaded["optimizer"])


def _match(metadata: Any, model_sd: dict[str, Any], directory: Path) -> None:
    """Raise CheckpointMismatchError unless the saved model has the live keys and shapes."""
    saved = {k[len("model."):]: v for k, v in metadata.state_dict_metadata.items()
             if k.startswith("model.")}
    missing = sorted(set(model_sd) - set(saved))
    unexpected = sorted(set(saved) - set(model_sd))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{directory} (DCP) does not fit the model: missing {missing[:5] or 'none'}, "
            f"unexpected {unexpected[:5] or 'none'}")
    for key, value in model_sd.items():
        size = getattr(saved[key], "size", None)
        if isinstance(value, torch.Tensor) and size is not None and \
                tuple(size) != tuple(value.shape):
            raise CheckpointMismatchError(
                f"{directory} (DCP) does not fit the model: {key} is {tuple(size)} in "
                f"the checkpoint, {tuple(value.shape)} in the model")
