"""Keras variables as shared objects (``ckpt_dedup``): ``model.weights.json``.

With ``ckpt_dedup`` a Keras checkpoint holds, instead of ``model.weights.h5``, an index
in Keras' own layout (each path of the save walk, its metadata, and its variables by
key), in which every variable of at least
:data:`~candle_ckpt.storage.objects.MIN_OBJECT_BYTES` names a shared object and the
smaller ones are inline (base64 of their bytes, with dtype and shape). Restoring reads
and checks every value against the live model's walk (paths, keys, shapes, dtypes)
before Keras' own load walk assigns any, as for a ``.weights.h5``; ``candle_ckpt.export``
writes the same values as the ``.weights.h5`` that ``model.load_weights`` reads.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from ...errors import CheckpointCorruptError, CheckpointMismatchError
from ...storage.objects import MIN_OBJECT_BYTES, Array, is_object_name, open_object
from ...storage.safeio import read_regular
from .stores import Entries, Values, capture_weights

if TYPE_CHECKING:
    from ...storage.sink import FileSink

INDEX_FILE = "model.weights.json"
FORMAT = "candle-ckpt-keras-objects"
_MAX_INDEX = 1 << 30


def _dtype_name(array: np.ndarray) -> str:
    return str(keras.backend.standardize_dtype(array.dtype))


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype a saved dtype name stands for (bfloat16 and friends through
    ml_dtypes, as Keras does). ValueError if none."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    import ml_dtypes

    found = getattr(ml_dtypes, name, None) if name.isidentifier() else None
    if found is None:
        raise ValueError(f"dtype {name!r} is not a numpy or ml_dtypes type")
    return np.dtype(found)


def _bytes_of(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def write_index(entries: Entries, sink: FileSink) -> None:
    """Store the large variables as objects and write the index naming them."""
    places: list[tuple[dict[str, Any], str, np.ndarray]] = []
    index: list[dict[str, Any]] = []
    for path, (metadata, values) in entries.items():
        described: dict[str, Any] = {}
        for key, value in values.items():
            array = np.asarray(value)
            entry: dict[str, Any] = {"dtype": _dtype_name(array), "shape": list(array.shape)}
            if array.nbytes >= MIN_OBJECT_BYTES:
                places.append((entry, key, array))
            else:
                entry["inline"] = base64.b64encode(bytes(_bytes_of(array))).decode("ascii")
            described[key] = entry
        index.append({"path": path, "metadata": metadata, "vars": described})
    names = sink.put_objects([Array(e["dtype"], tuple(a.shape), _bytes_of(a))
                              for e, _, a in places])
    for (entry, _, _), name in zip(places, names, strict=True):
        entry["object"] = name
    with sink.open(INDEX_FILE) as f:
        f.write(json.dumps({"format": FORMAT, "format_version": 1, "entries": index},
                           allow_nan=False).encode("utf-8"))


def read_index(directory: Path, info: dict[str, Any]) -> Entries:
    """Every value the index names, read (objects: size, header and, through the
    checkpoint's verification, checksum checked) into memory of its own.

    Raises:
        CheckpointCorruptError: the index or an object is damaged.
    """
    path = directory / INDEX_FILE
    try:
        index = json.loads(read_regular(path, _MAX_INDEX, "a checkpoint file"))
    except ValueError as err:
        raise CheckpointCorruptError(f"{path}: not JSON: {err}") from None
    listed = info.get("objects")
    if not isinstance(index, dict) or index.get("format") != FORMAT \
            or not isinstance(index.get("entries"), list) or not isinstance(listed, dict):
        raise CheckpointCorruptError(f"{path} is not a candle-ckpt Keras index, or "
                                     "ckpt-info.json lists no objects")
    out: Entries = {}
    for item in index["entries"]:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) \
                or not isinstance(item.get("vars"), dict):
            raise CheckpointCorruptError(f"{path}: bad entry {str(item)[:200]}")
        metadata = item.get("metadata")
        values: dict[str, np.ndarray] = {}
        for key, entry in item["vars"].items():
            try:
                values[key] = _read_value(directory, entry, listed)
            except (OSError, ValueError, TypeError, KeyError) as err:
                raise CheckpointCorruptError(f"{path}: {item['path']}/{key}: {err}") from None
        out[item["path"]] = (metadata if isinstance(metadata, dict) else None, values)
    return out


def _read_value(directory: Path, entry: Any, listed: dict[str, Any]) -> np.ndarray:
    if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) \
            or not all(type(n) is int and n >= 0 for n in entry["shape"]):
        raise ValueError(f"bad variable entry {str(entry)[:200]}")
    dtype = numpy_dtype(str(entry.get("dtype")))
    shape = tuple(entry["shape"])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if "inline" in entry:
        data = base64.b64decode(entry["inline"], validate=True)
    else:
        name = str(entry.get("object"))
        if not is_object_name(name) or not isinstance(listed.get(name), dict):
            raise ValueError(f"object {str(name)[:80]!r} is not listed in ckpt-info.json")
        size = listed[name].get("size")
        fd, header = open_object(directory, name, size)
        try:
            if header.dtype != entry["dtype"] or header.shape != shape:
                raise ValueError(f"object {name} holds {header.dtype} {list(header.shape)}, "
                                 f"the index says {entry['dtype']} {list(shape)}")
            data = os.pread(fd, size - header.offset, header.offset)
        finally:
            os.close(fd)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{len(data)} bytes do not hold {dtype} {list(shape)}")
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def check_against(model: Any, skip: list[Any], saved: Entries, name: str) -> Values:
    """The saved values, each checked against the live model's save walk (the same
    paths and keys, shapes and dtypes), as Keras' load walk will ask for them.

    Raises:
        CheckpointMismatchError: naming the first value that does not fit.
    """
    live = capture_weights(model, skip, share=True)
    out: Values = {}
    for inner_path, (_, values) in live.items():
        where = inner_path or "(top level)"
        stored = saved.get(inner_path, (None, {}))[1]
        if set(stored) != set(values):
            raise CheckpointMismatchError(
                f"{name} does not fit the model: {where!r} holds variables "
                f"{sorted(stored)[:6]} in the checkpoint, {sorted(values)[:6]} in the model")
        for key, array in values.items():
            got = stored[key]
            live_dtype = keras.backend.standardize_dtype(array.dtype)
            if tuple(got.shape) != tuple(array.shape) or _dtype_name(got) != live_dtype:
                raise CheckpointMismatchError(
                    f"{name} does not fit the model: {where}/{key} is {tuple(got.shape)} "
                    f"{_dtype_name(got)} in the checkpoint, {tuple(array.shape)} "
                    f"{live_dtype} in the model")
        if values:
            out[inner_path] = dict(stored)
    return out


def optimizer_vars(saved: Entries) -> list[np.ndarray] | None:
    """The optimizer's variables in its order (a restart before compile keeps them)."""
    values = saved.get("optimizer", (None, {}))[1]
    if not values:
        return None
    if set(values) != {str(i) for i in range(len(values))}:
        raise CheckpointCorruptError(f"optimizer holds {sorted(values)[:6]}, not the "
                                     f"variables 0..{len(values) - 1} an optimizer writes")
    return [values[str(i)] for i in range(len(values))]
