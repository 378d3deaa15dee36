"""A Keras checkpoint read without a model (``candle_ckpt.load_state``) and written as one
``.weights.h5`` (``candle_ckpt.export``, ``candle-ckpt export``) that
``model.load_weights`` reads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import CheckpointCorruptError
from ..base import member_name
from . import h5
from . import objects as keras_objects
from .stores import Entries, write_weights

LEGACY_MODEL_FILE = "model.h5"


def read_entries(directory: Path, info: dict[str, Any]) -> Entries:
    """Every variable of the checkpoint, by Keras path and key, with its metadata."""
    name = member_name(info, "model_file", LEGACY_MODEL_FILE)
    if name == keras_objects.INDEX_FILE:
        return keras_objects.read_index(directory, info)
    path = directory / name
    out: Entries = {}
    with h5.open_file(path) as f:
        found: list[str] = []

        def visit(group_name: str, item: Any) -> None:
            if isinstance(item, h5py.Group) and group_name.split("/")[-1] == "vars":
                found.append(group_name)

        f.visititems(visit)
        for group_name in sorted(found):
            group = h5.member(f, group_name, "group", path)
            if group is None:
                continue
            values: dict[str, np.ndarray] = {}
            for key in sorted(h5.keys(group, path), key=lambda k: (len(k), k)):
                dataset = h5.member(group, key, "dataset", path)
                values[key] = h5.read(dataset, h5.describe(dataset, path), path)
            out[group_name[:-len("/vars")] if group_name != "vars" else ""] = (None, values)
    return out


def read_state(directory: Path, info: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """``{Keras path: {variable key: array}}``, e.g. ``"layers/dense/vars"``'s ``"0"``."""
    return {(f"{p}/vars" if p else "vars"): values
            for p, (_, values) in read_entries(directory, info).items()}


def write_plain(directory: Path, info: dict[str, Any], target: Path) -> None:
    """The checkpoint's weights as the ``.weights.h5`` ``model.load_weights`` reads."""
    name = member_name(info, "model_file", LEGACY_MODEL_FILE)
    if name.endswith(".weights.h5"):
        shutil.copyfile(directory / name, target, follow_symlinks=False)
        return
    if name != keras_objects.INDEX_FILE:
        raise CheckpointCorruptError(f"{directory / name}: an original CANDLE model.h5 is "
                                     "exported as it is: copy it")
    write_weights(keras_objects.read_index(directory, info), target)
