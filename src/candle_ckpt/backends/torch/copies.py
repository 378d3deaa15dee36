"""Host copies of torch state, and the check that ``torch.load(weights_only=True)`` can
read back everything a checkpoint would hold."""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

import torch
from torch import nn

from ...errors import CkptParamError
from ..base import BufferReuse

try:  # numpy is optional for torch; numpy scalars are saved as Python numbers
    import numpy as _np
except ImportError:  # pragma: no cover - torch wheels normally bring numpy along
    _np = None  # type: ignore[assignment]

SCALARS = (type(None), bool, int, float, complex, str, bytes)


class Copies(BufferReuse[torch.Tensor, torch.Tensor]):
    """One capture's deep copy of state into host memory (see :meth:`copy`).

    Device-to-host copies go into pinned host memory and are issued without blocking,
    so a GPU state is copied at the bus's speed rather than the pageable ~1 GB/s;
    :meth:`wait` waits for them before anything reads the copies.
    """

    def __init__(self, share: bool = False) -> None:
        self.share = share
        self.shared: set[int] = set()  # ids of the live tensors returned as they are
        self.devices: set[torch.device] = set()  # CUDA devices with copies in flight

    def copy(self, value: Any, where: str, into: Any = None) -> Any:
        """Deep-copy ``value`` to host memory, keeping only what weights_only can read.

        ``into`` is an earlier copy of the same state: its tensors are overwritten where
        they fit (same shape, dtype and strides), which saves allocating (and
        page-faulting in) the whole state again; anything that does not fit is copied
        afresh. With ``share``, compact CPU tensors are not copied at all (detached
        views of the live ones).

        Raises:
            CkptParamError: ``where`` holds an object torch.load(weights_only=True)
                refuses.
        """
        kind = type(value)
        if kind in SCALARS:
            return value
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            check_tensor_type(tensor, where)
            if self.share and _compact_cpu(tensor):
                self.shared.add(id(tensor))
                return tensor
            return self.host_copy(tensor, into)
        if kind is bytearray:
            return bytearray(value)
        if kind in (torch.Size, torch.dtype, torch.device):
            return value
        if kind in (dict, OrderedDict, Counter):
            old = into if type(into) is kind else {}
            out: Any = kind({self.copy(k, where): self.copy(v, f"{where}[{k!r}]", old.get(k))
                             for k, v in value.items()})
            metadata = getattr(value, "_metadata", None)
            if metadata is not None:  # module versions, used by load_state_dict
                out._metadata = self.copy(metadata, where)
            return out
        if kind in (list, tuple):
            olds = into if type(into) is kind and len(into) == len(value) else [None] * len(value)
            return kind(self.copy(v, f"{where}[{i}]", o)
                        for i, (v, o) in enumerate(zip(value, olds, strict=True)))
        if kind is set:
            return {self.copy(v, where) for v in value}
        if _np is not None and isinstance(value, _np.generic) and value.dtype.kind in "biufc":
            return value.item()  # a numpy scalar: same value as a Python number
        raise CkptParamError(
            f"cannot checkpoint {where}: it holds a {kind.__module__}.{kind.__qualname__}, "
            "which torch.load(weights_only=True) cannot read back. State must consist of "
            "tensors, numbers, strings, bytes and dict/list/tuple/set containers"
        )

    # The buffer rule of BufferReuse, for tensors.
    def fits(self, buffer: Any, source: torch.Tensor) -> bool:
        """Can ``buffer`` (an earlier host copy) take ``source``'s values via ``copy_``?"""
        return (
            type(buffer) is torch.Tensor
            and type(source) is torch.Tensor  # no subclasses: their copies may carry more
            and buffer is not source
            and buffer.device.type == "cpu"
            and buffer.layout == torch.strided
            and source.layout == torch.strided
            and not source.is_quantized
            and not (source.is_conj() or source.is_neg())
            and buffer.dtype == source.dtype
            and buffer.shape == source.shape
            and buffer.stride() == source.stride()
            and buffer.storage_offset() == 0
        )

    def copy_into(self, buffer: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        on_gpu = source.device.type == "cuda"
        if on_gpu:
            self.devices.add(source.device)
        return buffer.copy_(source, non_blocking=on_gpu and buffer.is_pinned())

    def fresh_copy(self, source: torch.Tensor) -> torch.Tensor:
        if source.device.type == "cuda" and source.layout == torch.strided:
            try:
                buffer = torch.empty_like(source, device="cpu", pin_memory=True)
            except RuntimeError:  # pinned memory exhausted or refused: pageable then
                return source.to("cpu", copy=True)
            self.devices.add(source.device)
            return buffer.copy_(source, non_blocking=True)
        return source.to("cpu", copy=True)

    def owned(self, value: Any) -> Any:
        """``value`` (a copy made by :meth:`copy`) without the live tensors it shares."""
        if isinstance(value, torch.Tensor):
            return None if id(value) in self.shared else value
        kind = type(value)
        if kind in (dict, OrderedDict, Counter):  # the kinds copy() makes, kept as they are
            return kind({k: self.owned(v) for k, v in value.items()})
        if kind in (list, tuple):
            return kind(self.owned(v) for v in value)
        return value

    def wait(self) -> None:
        """Wait for the device-to-host copies issued by this capture."""
        for device in self.devices:
            torch.cuda.synchronize(device)
        self.devices.clear()


def _compact_cpu(tensor: torch.Tensor) -> bool:
    """A plain CPU tensor that is all of its storage (torch.save writes just its bytes)."""
    return (
        type(tensor) is torch.Tensor
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and not (tensor.is_conj() or tensor.is_neg())
        and tensor.storage_offset() == 0
        and tensor.is_contiguous()
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )


def check_tensor_type(tensor: torch.Tensor, where: str) -> None:
    """Raise CkptParamError unless weights_only loading can rebuild ``tensor``'s class.

    ``tensor`` is detached, as it is saved: a subclass that disables
    ``__torch_function__`` (as nn.Parameter does) detaches to a plain tensor, saved and
    loaded as one, and restore copies its values into the live tensor, so nothing is
    lost. Any other subclass is pickled with its class, which torch.load(weights_only=True)
    refuses unless the class was registered with torch.serialization.add_safe_globals.
    It is refused rather than saved as a plain tensor: a subclass's values may live
    outside its storage (wrapper subclasses) and an optimizer's load_state_dict keeps
    the loaded tensor itself, so a plain copy could lose what the subclass holds.
    """
    kind = type(tensor)
    if kind is torch.Tensor or kind is nn.Parameter or kind in _safe_globals():
        return
    name = f"{kind.__module__}.{kind.__qualname__}"
    raise CkptParamError(
        f"cannot checkpoint {where}: it is a tensor of subclass {name}, which "
        "torch.load(weights_only=True) cannot read back, so no checkpoint of it could be "
        f"restarted from. Store a plain tensor there (t.as_subclass(torch.Tensor)), or call "
        f"torch.serialization.add_safe_globals([{kind.__qualname__}]) before set_model and "
        "before restart if the class is safe to load"
    )


def _safe_globals() -> list[Any]:
    """The classes torch.load(weights_only=True) is allowed to rebuild in this process."""
    get = getattr(torch.serialization, "get_safe_globals", None)  # torch >= 2.5
    entries = get() if get is not None else []
    return [e[0] if isinstance(e, tuple) else e for e in entries]


def check_loadable(value: Any, where: str) -> None:
    """Raise CkptParamError if ``value`` holds what weights_only loading refuses."""
    kind = type(value)
    if isinstance(value, torch.Tensor):
        check_tensor_type(value.detach(), where)
        return
    if kind in SCALARS or kind in (bytearray, torch.Size, torch.dtype, torch.device):
        return
    if kind in (dict, OrderedDict, Counter):
        for k, v in value.items():
            check_loadable(k, where)
            check_loadable(v, f"{where}[{k!r}]")
        return
    if kind in (list, tuple, set):
        for i, v in enumerate(value):
            check_loadable(v, f"{where}[{i}]")
        return
    Copies().copy(value, where)  # numpy scalars pass; anything else raises there
