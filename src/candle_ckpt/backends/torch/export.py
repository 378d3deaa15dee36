"""A torch checkpoint read without a model (``candle_ckpt.load_state``) and written as one
plain ``torch.save`` file (``candle_ckpt.export``, ``candle-ckpt export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointCorruptError
from ..base import member_name
from . import objects as tensor_objects
from .files import FORMAT_VERSION, LEGACY_MODEL_FILE, load_regular


def read_state(directory: Path, info: dict[str, Any]) -> Any:
    """What the checkpoint's model file holds, as ``torch.load`` returns it, with the
    shared objects (``ckpt_dedup``) read into place: the payload of a plain ``model.pt``.

    Raises:
        CheckpointCorruptError: a shared object does not fit its place, or the file holds
            placeholders without objects.
    """
    name = member_name(info, "model_file", LEGACY_MODEL_FILE)
    payload = load_regular(directory / name)
    if isinstance(payload, dict) and tensor_objects.REFS in payload:
        try:
            payload = tensor_objects.materialize(directory, info, payload)
        except (OSError, ValueError) as err:
            raise CheckpointCorruptError(f"{directory}: {err}") from err
        payload["format_version"] = FORMAT_VERSION  # a plain model.pt's payload now
    elif tensor_objects.has_placeholders(payload):
        raise CheckpointCorruptError(f"{directory / name} holds tensors without data and "
                                     "names no objects")
    return payload


def write_plain(directory: Path, info: dict[str, Any], target: Path) -> None:
    """``torch.save`` of :func:`read_state` into ``target`` (read back by
    ``torch.load(target, weights_only=True)``)."""
    torch.save(read_state(directory, info), target)
