"""Reading the HDF5 files of a Keras checkpoint without trusting them.

Keras' own loaders (``load_weights`` for ``.weights.h5`` and for a legacy ``model.h5``)
refuse some files only while they assign, after part of the model has changed. Here
everything they refuse is refused first, as :class:`CheckpointCorruptError` (damage:
restart falls back to an older checkpoint), and the values are read into memory, so
the Keras backend assigns only values that were already read and checked:

- a soft or external link anywhere on the way to a value (an external link opens
  another file; a soft link can alias another value or dangle);
- a dataset with external storage (raw bytes read from any path on the machine) or a
  virtual one (mapped from other datasets or files);
- a group where a dataset belongs and the reverse; a dataset without data (a null
  dataspace); a type that is not a plain number (compound, string, reference, array,
  opaque), or a ``bfloat16`` attribute on data that is not 2 bytes wide;
- a declared size far beyond what is stored (a decompression bomb), before reading;
- data that cannot be read (a missing filter, damaged chunks), and a file that is not
  HDF5 at all.

Whether the values fit the live model is the caller's question (a
:class:`~candle_ckpt.errors.CheckpointMismatchError`): :func:`describe` gives each
dataset's shape and dtype without reading its data, so that is answered before any
large read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import CheckpointCorruptError

# Keras' own guard against shape bombs: a declared size above 4 GiB must be stored in
# at most 1000 times fewer bytes (genuine arrays, even compressed, are).
_BOMB_FLOOR_BYTES = 1 << 32
_BOMB_MAX_EXPANSION = 1000

_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)


@dataclass(frozen=True)
class Spec:
    """What a dataset declares: its shape and dtype name ('float32', 'bfloat16', ...)."""

    shape: tuple[int, ...]
    dtype: str


def open_file(path: Path) -> h5py.File:
    """Open ``path`` read-only, or CheckpointCorruptError if it is no readable HDF5 file."""
    try:
        return h5py.File(path, "r")
    except _H5_ERRORS as err:
        raise CheckpointCorruptError(f"{path}: not a readable HDF5 file: {err}") from None


def member(parent: Any, name: str, kind: str, path: Path) -> Any:
    """The group or dataset (``kind``) at ``name`` below ``parent``; None if absent.

    ``name`` may hold '/'-separated parts: each is checked to be a plain (hard) link
    before it is followed, and each part on the way to be a group.

    Raises:
        CheckpointCorruptError: a soft or external link on the way, an object of another
            kind, or a name that is no valid path.
    """
    parts = name.split("/")
    if not name or any(part in ("", ".") for part in parts):
        raise CheckpointCorruptError(f"{path}: {name!r} is not a valid name in the file")
    node = parent
    for i, part in enumerate(parts):
        where = f"{node.name.rstrip('/')}/{part}"
        try:
            link = node.get(part, getlink=True)
            if link is None:
                return None
            if not isinstance(link, h5py.HardLink):
                raise CheckpointCorruptError(
                    f"{path}: {where} is {_describe_link(link)}; a checkpoint holds no "
                    "links (Keras refuses them)")
            child = node[part]
        except CheckpointCorruptError:
            raise
        except _H5_ERRORS as err:
            raise CheckpointCorruptError(f"{path}: {where} cannot be opened: {err}") from None
        want = "dataset" if (kind == "dataset" and i == len(parts) - 1) else "group"
        expected = h5py.Dataset if want == "dataset" else h5py.Group
        if not isinstance(child, expected):
            raise CheckpointCorruptError(
                f"{path}: {where} is a {_kind_of(child)} where a {want} belongs")
        node = child
    return node


def keys(group: Any, path: Path) -> set[str]:
    """The names of a group's members (links included, so none is missed)."""
    try:
        return set(group.keys())
    except _H5_ERRORS as err:
        raise CheckpointCorruptError(f"{path}: {group.name} cannot be listed: {err}") from None


def names(group: Any, attribute: str, path: Path) -> list[str]:
    """A list of names Keras keeps in an attribute (split into ``name0``, ``name1``... when
    large), as Keras' legacy loader reads it; [] when absent."""
    try:
        attrs = group.attrs
        if attribute in attrs:
            chunks = [attrs[attribute]]
        else:
            chunks = []
            while f"{attribute}{len(chunks)}" in attrs:
                chunks.append(attrs[f"{attribute}{len(chunks)}"])
        out = []
        for chunk in chunks:
            for item in np.atleast_1d(np.asarray(chunk, dtype=object)):
                out.append(item.decode("utf8") if isinstance(item, bytes) else item)
    except (*_H5_ERRORS, UnicodeDecodeError) as err:
        raise CheckpointCorruptError(
            f"{path}: attribute {attribute!r} of {group.name} cannot be read: {err}") from None
    bad = [item for item in out if not isinstance(item, str)]
    if bad:
        raise CheckpointCorruptError(
            f"{path}: attribute {attribute!r} of {group.name} holds {bad[0]!r}, not a name")
    return out


def describe(dataset: Any, path: Path) -> Spec:
    """A dataset's shape and dtype, having refused what Keras refuses; no data is read."""
    where = dataset.name
    try:
        if dataset.external:
            raise CheckpointCorruptError(
                f"{path}: {where} keeps its data in external file(s) "
                f"{[entry[0] for entry in dataset.external]!r}; Keras refuses external "
                "storage")
        if dataset.is_virtual:
            raise CheckpointCorruptError(
                f"{path}: {where} is a virtual dataset (mapped from other data); Keras "
                "refuses virtual datasets")
        shape = dataset.shape
        dtype = dataset.dtype
        declared = dataset.attrs.get("dtype")
        stored = dataset.id.get_storage_size()
    except CheckpointCorruptError:
        raise
    except _H5_ERRORS as err:
        raise CheckpointCorruptError(f"{path}: {where} cannot be inspected: {err}") from None
    if shape is None:
        raise CheckpointCorruptError(f"{path}: {where} holds no data (a null dataspace)")
    if isinstance(declared, bytes):
        declared = declared.decode("utf8", "replace")
    if isinstance(declared, str) and declared == "bfloat16":
        # Keras writes bfloat16 as 2-byte opaque data marked by this attribute.
        if dtype.itemsize != 2 or dtype.kind not in "Vu" or dtype.fields is not None:
            raise CheckpointCorruptError(
                f"{path}: {where} is marked bfloat16 but stores {dtype}")
        name = "bfloat16"
    elif dtype.kind in "biufc" and dtype.fields is None and dtype.subdtype is None:
        name = dtype.name  # byte-order free: '>f4' is 'float32'
    else:
        raise CheckpointCorruptError(
            f"{path}: {where} stores {dtype} values, not plain numbers")
    size = math.prod(shape) * dtype.itemsize
    if size > _BOMB_FLOOR_BYTES and size > _BOMB_MAX_EXPANSION * stored:
        raise CheckpointCorruptError(
            f"{path}: {where} declares {size} bytes but stores {stored}; refusing to "
            "expand it (Keras refuses such shape bombs)")
    return Spec(tuple(int(n) for n in shape), name)


def read(dataset: Any, spec: Spec, path: Path) -> np.ndarray:
    """Read a described dataset whole, in native byte order (bfloat16 as ml_dtypes')."""
    try:
        value = np.asarray(dataset[()])
    except Exception as err:  # h5py and the HDF5 filters raise many types
        raise CheckpointCorruptError(
            f"{path}: {dataset.name} cannot be read: {type(err).__name__}: {err}") from None
    value = value.astype(value.dtype.newbyteorder("="), copy=False)
    if spec.dtype == "bfloat16":
        import ml_dtypes  # a Keras dependency

        return value.view(ml_dtypes.bfloat16)
    return value


def _describe_link(link: Any) -> str:
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path!r}"
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.filename!r}:{link.path!r}"
    return f"a {type(link).__name__}"


def _kind_of(obj: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        return "dataset"
    if isinstance(obj, h5py.Group):
        return "group"
    return type(obj).__name__
