"""Restart a torch checkpoint from a memory-mapped file, tensor by tensor, in place.

A plain ``torch.load`` reads the whole file into fresh host memory, and
``load_state_dict`` then copies it once more into the live tensors: a restart holds a
second copy of the whole state. Here the file is mapped (``torch.load(mmap=True)``):
loading it reads only the pickled structure, so every name, shape and dtype can be
checked against the live objects before a byte of tensor data is read (validate, then
apply). Applying copies each saved tensor, in bounded chunks, straight from the mapping
into the live parameter, buffer or optimizer state tensor on its own device, and tells
the kernel after each chunk that the mapped pages are no longer needed
(``madvise(MADV_DONTNEED)``), so the mapped part of the file resident in this process
stays about one chunk. After a restart nothing refers to the mapping: what is not
copied into a live tensor (RNG states, small optimizer entries such as ``step``, the
state of other entries) is cloned first.

The optimizer's state is copied into the tensors it already has when they fit (same
shape, dtype and device as ``Optimizer.load_state_dict`` would make them); an optimizer
without state yet gets them allocated, which is memory its first step would allocate
anyway. ``load_state_dict`` of the module and the optimizer still runs last, on the
copied tensors (a copy of a tensor into itself is free), so their hooks, extra state and
hyperparameters are restored exactly as before.

The mapping is private and read-only in effect (nothing writes into it), so dropping
its pages loses nothing: a page read again is read again from the file. A checkpoint
file is never truncated or rewritten while it is committed (the keep policy renames and
unlinks), so the file under the mapping does not change while it is copied.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...storage.safeio import open_regular
from .files import torch_load

__all__ = ["CHUNK_BYTES", "MappedCheckpoint", "load_mapped"]

CHUNK_BYTES = 32 << 20  # copied, then dropped from this process, at a time
_SMALL_BYTES = 1 << 20  # smaller tensors are cloned: no chunking, no madvise
_ZIP_MAGIC = b"PK\x03\x04"
_MADV_WILLNEED = 3  # Linux and the BSDs alike
_MADV_DONTNEED = 4
_MAX_ADDRESS = 1 << 64


def load_mapped(path: Path, fallback: Callable[[Path], Any]) -> MappedCheckpoint:
    """``torch.load(weights_only=True)`` of a regular file, tensors mapped, not read.

    The file is opened without following a link and, where ``/proc`` exists, torch maps
    and reads that very descriptor. A file torch cannot map (not a zip archive: written
    by ``torch.save(_use_new_zipfile_serialization=False)``), or a process where torch's
    mappings were made shared (``set_default_mmap_options(MAP_SHARED)``, under which a
    write into a loaded tensor would reach the checkpoint), is read whole by
    ``fallback`` and then applied the same way, without dropping pages.
    """
    fd = open_regular(path, os.O_RDONLY, role="the model file")
    try:
        if os.pread(fd, len(_ZIP_MAGIC), 0) != _ZIP_MAGIC or not _private_mappings():
            return MappedCheckpoint(fallback(path), None)
        proc = f"/proc/self/fd/{fd}"
        source: Any = proc if os.path.exists(proc) else path
        payload = torch_load(source, path.name, mmap=True)
    finally:
        os.close(fd)
    return MappedCheckpoint(payload, _extent(payload))


def _private_mappings() -> bool:
    get = getattr(torch.serialization, "get_default_mmap_options", None)
    return get is None or get() == mmap.MAP_PRIVATE


def _extent(payload: Any) -> tuple[int, int] | None:
    """The address range spanned by the storages of every tensor in ``payload``.

    torch maps the whole file once and every storage is a slice of that mapping, so
    every address in this range belongs to it.
    """
    low, high = -1, -1
    for tensor in _tensors(payload):
        storage = tensor.untyped_storage()
        start, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or tensor.device.type != "cpu":
            continue
        low = start if low < 0 else min(low, start)
        high = max(high, start + nbytes)
    return (low, high) if low >= 0 else None


def _tensors(value: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return found


class MappedCheckpoint:
    """A loaded checkpoint whose tensors (may) live in a file mapping; how to apply it.

    ``payload`` is what torch.load returned; ``extent`` the mapping's address range
    (None: read into memory, nothing to drop). After :meth:`release`, nothing here
    refers to the mapping any more.
    """

    def __init__(self, payload: Any, extent: tuple[int, int] | None,
                 more: list[tuple[int, int]] | None = None) -> None:
        self.payload = payload
        # The mappings' address ranges: the file's, and (``ckpt_dedup``) each object's.
        self.extents = sorted(([extent] if extent is not None else []) + list(more or []))
        self._madvise = _madvise() if self.extents else None

    @property
    def extent(self) -> tuple[int, int] | None:
        """The first mapping's address range (None: nothing mapped)."""
        return self.extents[0] if self.extents else None

    # ------------------------------------------------------------------ the mapping
    def _extent_of(self, tensor: torch.Tensor) -> tuple[int, int] | None:
        if not self.extents or tensor.device.type != "cpu" or tensor.numel() == 0:
            return None
        address = tensor.data_ptr()
        i = bisect.bisect_right(self.extents, (address, _MAX_ADDRESS)) - 1
        if i >= 0 and self.extents[i][0] <= address < self.extents[i][1]:
            return self.extents[i]
        return None

    def mapped(self, tensor: torch.Tensor) -> bool:
        """Does ``tensor`` read from a file mapping?"""
        return self._extent_of(tensor) is not None

    def drop(self, tensor: torch.Tensor) -> None:
        """Drop the mapped pages ``tensor`` spans from this process (a hint, never data:
        the pages are the file's, unmodified, and are read again if touched again)."""
        extent = self._extent_of(tensor)
        if self._madvise is None or extent is None:
            return
        start, end = _span(tensor)
        page = mmap.PAGESIZE
        # Whole pages, inside the mapping: it starts at the file's first page and its
        # last page is the file's, so rounding outward from the extent stays inside.
        low = max(start, extent[0]) // page * page
        high = -(-min(end, extent[1]) // page) * page
        if high > low:
            self._madvise(low, high - low, _MADV_DONTNEED)

    def prefetch(self, tensor: torch.Tensor) -> None:
        """Ask the kernel to start reading ``tensor``'s pages of the file now (into the
        page cache, not into this process), so that a cold file is read while the
        previous chunk is copied."""
        extent = self._extent_of(tensor)
        if self._madvise is None or extent is None:
            return
        start, end = _span(tensor)
        page = mmap.PAGESIZE
        low = start // page * page
        self._madvise(low, max(0, min(end, extent[1]) - low), _MADV_WILLNEED)

    def release(self) -> None:
        """Forget the payload: the mapping goes away with its last tensor."""
        self.payload = None

    # ------------------------------------------------------------------ copying
    def copy_into(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """``dst.copy_(src)`` in chunks of at most CHUNK_BYTES, each dropped after."""
        nbytes = src.numel() * src.element_size()
        with torch.no_grad():
            if nbytes <= CHUNK_BYTES or not (src.is_contiguous() and dst.is_contiguous()) \
                    or dst.shape != src.shape:
                dst.copy_(src)
                self.drop(src)
                return
            flat_dst, flat_src = dst.view(-1), src.view(-1)
            step = max(1, CHUNK_BYTES // src.element_size())
            self.prefetch(flat_src[:step])
            for start in range(0, flat_src.numel(), step):
                part = flat_src[start:start + step]
                self.prefetch(flat_src[start + step:start + 2 * step])
                flat_dst[start:start + step].copy_(part)
                self.drop(part)

    def owned(self, value: Any) -> Any:
        """``value`` with its mapped tensors cloned, containers rebuilt."""
        if isinstance(value, torch.Tensor):
            return value.clone() if self.mapped(value) else value
        kind = type(value)
        if kind in (dict, OrderedDict):
            out: Any = kind((k, self.owned(v)) for k, v in value.items())
            metadata = getattr(value, "_metadata", None)
            if metadata is not None:
                out._metadata = metadata
            return out
        if kind in (list, tuple):
            return kind(self.owned(v) for v in value)
        if kind is set:
            return {self.owned(v) for v in value}
        return value

    # ------------------------------------------------------------------ applying
    def apply_module(self, module: nn.Module, saved: dict[str, Any]) -> None:
        """``module.load_state_dict(saved)``, each saved tensor copied into its live one
        first.

        A saved tensor without a live tensor of its shape and dtype is cloned and left to
        ``load_state_dict`` (which raises on what does not fit, as it always does).
        """
        live = module.state_dict(keep_vars=True)  # the parameters and buffers themselves
        state: OrderedDict[str, Any] = OrderedDict()
        for key, value in saved.items():
            target = live.get(key)
            if isinstance(value, torch.Tensor) and isinstance(target, torch.Tensor) \
                    and target.shape == value.shape and target.dtype == value.dtype:
                self.copy_into(target, value)
                state[key] = target  # load_state_dict copies it into itself: free
            else:
                state[key] = self.owned(value)
        metadata = getattr(saved, "_metadata", None)
        if metadata is not None:
            state._metadata = metadata  # type: ignore[attr-defined]  # module versions
        module.load_state_dict(state)

    def apply_optimizer(self, optimizer: Any, saved: dict[str, Any]) -> None:
        """``optimizer.load_state_dict(saved)``, its large state tensors copied in place
        first.

        Each per-parameter state tensor is copied into the optimizer's current one when
        that has the dtype and device ``Optimizer.load_state_dict`` would cast it to (its
        parameter's, for a floating-point parameter), else into a new one made so;
        ``load_state_dict`` then keeps it as it is. Small tensors (``step``) are cloned
        and cast by ``load_state_dict`` itself.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            optimizer.load_state_dict(self.owned(saved))
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        ids = [i for group in saved["param_groups"] for i in group["params"]]
        by_id = dict(zip(ids, params, strict=False))  # the counts were checked before
        state: dict[Any, Any] = {}
        for pid, entry in saved["state"].items():
            param = by_id.get(pid)
            if param is None or not isinstance(entry, dict):
                state[pid] = self.owned(entry)
                continue
            current = optimizer.state.get(param, {})
            state[pid] = {key: self._state_tensor(param, value, current.get(key))
                          if _large(value) and key != "step" else self.owned(value)
                          for key, value in entry.items()}
        rest = {k: self.owned(v) for k, v in saved.items() if k != "state"}
        optimizer.load_state_dict({**rest, "state": state})

    def _state_tensor(self, param: torch.Tensor, saved: torch.Tensor,
                      current: Any) -> torch.Tensor:
        """The saved state tensor copied into one as Optimizer.load_state_dict casts it."""
        dtype = param.dtype if param.is_floating_point() else saved.dtype
        if isinstance(current, torch.Tensor) and current.shape == saved.shape \
                and current.dtype == dtype and current.device == param.device \
                and current is not param:
            target = current
        else:
            target = torch.empty_like(saved, dtype=dtype, device=param.device)
        self.copy_into(target, saved)
        return target

    def apply_state(self, obj: Any, state: Any, load: Callable[[Any], None]) -> None:
        """Restore a ``set_model`` entry: modules and optimizers as above, others by
        ``load`` (with their tensors cloned off the mapping)."""
        if isinstance(obj, nn.Module) and isinstance(state, dict):
            self.apply_module(obj, state)
        elif isinstance(obj, torch.optim.Optimizer) and isinstance(state, dict):
            self.apply_optimizer(obj, state)
        else:
            load(self.owned(state))


def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise, where dropping a mapping's pages is worth asking for (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol table
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _span(tensor: torch.Tensor) -> tuple[int, int]:
    """The address range of the bytes ``tensor`` reads."""
    size = tensor.element_size()
    start = tensor.data_ptr()
    low = high = 0
    for n, stride in zip(tensor.shape, tensor.stride(), strict=True):
        reach = (n - 1) * stride * size
        if reach < 0:
            low += reach
        else:
            high += reach
    return start + low, start + high + size


def _large(value: Any) -> bool:
    return isinstance(value, torch.Tensor) \
        and value.numel() * value.element_size() >= _SMALL_BYTES
