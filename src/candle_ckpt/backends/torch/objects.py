"""Torch state as shared objects (``ckpt_dedup``): ``model.pt`` without its large tensors.

Saving splits the payload: every tensor of at least
:data:`~candle_ckpt.storage.objects.MIN_OBJECT_BYTES` becomes an object of the store
(its bytes, dtype and shape, named by their hash), and ``model.pt`` keeps the rest of
the payload with a *meta* tensor (shape and dtype, no data) in each such place, plus
``object_refs``: the path of each place in the payload and the object it holds. So the
file is small, read with ``torch.load(weights_only=True)`` like any other, and the
matching of names, shapes and dtypes against the live objects runs on it unchanged.

Restoring maps each object (private, read-only in effect) and puts a tensor over the
mapping in its place: :class:`~candle_ckpt.backends.torch.stream.MappedCheckpoint`
then copies it chunk by chunk into the live tensor, dropping the pages as it goes, as
for a whole ``model.pt``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ...storage.objects import MIN_OBJECT_BYTES, Array, is_object_name, open_object

REFS = "object_refs"  # the payload key listing [path, object name] pairs

Path_ = tuple[Any, ...]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype an object's header names. ValueError if it names none."""
    value = getattr(torch, name, None) if name.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"object dtype {name!r} is not a torch dtype")
    return value


def _objectable(t: torch.Tensor) -> bool:
    return (type(t) is torch.Tensor and t.device.type == "cpu" and t.layout == torch.strided
            and not t.is_quantized and not (t.is_conj() or t.is_neg())
            and t.numel() * t.element_size() >= MIN_OBJECT_BYTES)


def split(payload: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[Path_, torch.Tensor]]]:
    """The payload with each large tensor replaced by a meta tensor, and those tensors."""
    found: list[tuple[Path_, torch.Tensor]] = []

    def walk(value: Any, path: Path_) -> Any:
        if isinstance(value, torch.Tensor):
            if _objectable(value):
                found.append((path, value))
                return torch.empty(value.shape, dtype=value.dtype, device="meta")
            return value
        kind = type(value)
        if kind in (dict, OrderedDict):
            out: Any = kind((k, walk(v, (*path, k))) for k, v in value.items())
            metadata = getattr(value, "_metadata", None)
            if metadata is not None:
                out._metadata = metadata
            return out
        if kind in (list, tuple):
            return kind(walk(v, (*path, i)) for i, v in enumerate(value))
        return value

    skeleton = walk(payload, ())
    return skeleton, found


def as_array(tensor: torch.Tensor) -> Array:
    """A CPU tensor's bytes (C order) as an object's array."""
    t = tensor.detach().contiguous()
    data = memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    return Array(dtype_name(t.dtype), tuple(t.shape), data)


def resolve(directory: Path, info: dict[str, Any], payload: dict[str, Any]
            ) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """The payload with each object mapped into its place; the mappings' address ranges.

    Every reference is checked first: listed in ``ckpt-info.json``'s ``objects`` with
    its size, a header whose dtype and shape are the placeholder's.

    Raises:
        ValueError: a reference, a placeholder or an object is damaged.
        OSError: an object is missing, a link, or not a regular file.
    """
    refs = payload.get(REFS)
    listed = info.get("objects")
    if not isinstance(refs, list) or not isinstance(listed, dict):
        raise ValueError(f"{REFS} or ckpt-info.json's 'objects' is missing or malformed")
    maps: dict[str, tuple[mmap.mmap, int, torch.dtype, tuple[int, ...]]] = {}
    extents: list[tuple[int, int]] = []
    by_path: dict[Path_, torch.Tensor] = {}
    for ref in refs:
        if not (isinstance(ref, (list, tuple)) and len(ref) == 2
                and isinstance(ref[0], (list, tuple)) and is_object_name(ref[1])):
            raise ValueError(f"{REFS}: bad entry {ref!r:.200}")
        path, name = tuple(ref[0]), ref[1]
        entry = listed.get(name)
        if not isinstance(entry, dict) or type(entry.get("size")) is not int:
            raise ValueError(f"object {name} is not listed in ckpt-info.json")
        if name not in maps:
            maps[name] = _map(directory, name, entry["size"], extents)
        mm, offset, dtype, shape = maps[name]
        placeholder = _at(payload, path)
        if not isinstance(placeholder, torch.Tensor) or placeholder.device.type != "meta" \
                or placeholder.dtype != dtype or tuple(placeholder.shape) != shape:
            raise ValueError(f"object {name} ({dtype}, {list(shape)}) does not fit its place "
                             f"{list(path)!r:.200} in the model file")
        count = 1
        for n in shape:
            count *= n
        by_path[path] = torch.frombuffer(mm, dtype=dtype, count=count,
                                         offset=offset).view(shape)
    out = _fill(payload, (), by_path)
    out.pop(REFS, None)
    if has_placeholders(out):
        raise ValueError("the model file holds a placeholder that no object fills")
    return out, extents


def _map(directory: Path, name: str, size: int, extents: list[tuple[int, int]]
         ) -> tuple[mmap.mmap, int, torch.dtype, tuple[int, ...]]:
    fd, header = open_object(directory, name, size)
    try:
        dtype = dtype_of(header.dtype)
        count = 1
        for n in header.shape:
            count *= n
        if header.offset + count * torch.empty((), dtype=dtype).element_size() != size:
            raise ValueError(f"object {name}: {size} bytes do not hold a {header.dtype} "
                             f"array of shape {list(header.shape)}")
        # Private: nothing written through it could reach the object (nothing writes).
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    start = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    extents.append((start, start + len(mm)))
    return mm, header.offset, dtype, header.shape


def _at(value: Any, path: Path_) -> Any:
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _fill(value: Any, path: Path_, by_path: dict[Path_, torch.Tensor]) -> Any:
    if path in by_path:
        return by_path[path]
    kind = type(value)
    if kind in (dict, OrderedDict):
        out: Any = kind((k, _fill(v, (*path, k), by_path)) for k, v in value.items())
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            out._metadata = metadata
        return out
    if kind in (list, tuple):
        return kind(_fill(v, (*path, i), by_path) for i, v in enumerate(value))
    return value


def has_placeholders(value: Any) -> bool:
    """Does ``value`` hold a meta tensor (a place no object filled)?"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.device.type == "meta":
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def materialize(directory: Path, info: dict[str, Any], payload: dict[str, Any]
                ) -> dict[str, Any]:
    """The payload with every object read into memory of its own (no mapping kept)."""
    mapped, _ = resolve(directory, info, payload)
    return _clone_mapped(mapped)


def _clone_mapped(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    kind = type(value)
    if kind in (dict, OrderedDict):
        out: Any = kind((k, _clone_mapped(v)) for k, v in value.items())
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            out._metadata = metadata
        return out
    if kind in (list, tuple):
        return kind(_clone_mapped(v) for v in value)
    return value
