"""CandleCkptPyTorch: the CANDLE checkpoint API for PyTorch training loops.

Usage, as CANDLE benchmarks write it::

    ckpt = candle.CandleCkptPyTorch(params)
    ckpt.set_model({"model": model, "optimizer": optimizer, "scheduler": scheduler})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    for epoch in range(initial_epoch, params["epochs"]):
        ...
        ckpt.ckpt_epoch(epoch, train_loss)

Each checkpoint is one ``model.pt`` written by ``torch.save``: the original CANDLE keys
(``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``loss``) plus the state of
every other ``set_model`` entry and the RNG states. It holds only tensors, numbers,
strings and containers, so it is read back with ``torch.load(weights_only=True)``: a
checkpoint file can never run code. ``capture_state`` checks that on the training thread
and refuses state that could not be read back that way, rather than writing a
checkpoint that restart could not load.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from ..commit import FileSink
from ..engine import CandleCkpt
from ..errors import CkptParamError, CkptParamTypeError
from ..integrity import safe_member

MODEL_FILE = "model.pt"
FORMAT = "candle-ckpt-torch"
FORMAT_VERSION = 1
_LEGACY_MODEL_FILE = "model.h5"  # the original CANDLE's torch file kept the Keras name
_REQUIRED = ("model", "optimizer")

try:  # numpy is optional for torch; its global RNG is saved when it is importable
    import numpy as _np
except ImportError:  # pragma: no cover - torch wheels normally bring numpy along
    _np = None  # type: ignore[assignment]


@dataclass
class TorchSnapshot:
    """A host-memory copy of everything one checkpoint holds."""

    payload: dict[str, Any]
    entries: list[str]
    rng_states: list[str]


@dataclass
class _Entry:
    """How one ``set_model`` entry is saved and restored."""

    key: str
    obj: Any
    kind: str  # "state_dict", "torch_generator", "python_random", "numpy_generator"


@dataclass
class _Restore:
    """What a checkpoint file says to restore, checked before anything is changed."""

    model: dict[str, Any]
    optimizer: dict[str, Any] | None
    entries: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] | None = None
    original_candle: bool = False  # written by the original CANDLE code


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


class CandleCkptPyTorch(CandleCkpt):
    """Checkpoint/restart for a PyTorch model, its optimizer and any stateful helpers.

    Args:
        gParams: dict or argparse.Namespace with the ``ckpt_*`` keys and ``epochs``.
        logger: "DEFAULT" (console), None or a ``logging.Logger``.
        verbose: console verbosity of the default logger.
    """

    backend_name = "torch"

    def __init__(self, gParams: Any = None, logger: Any = "DEFAULT", verbose: bool = True):
        self.model: dict[str, Any] | None = None  # the dict given to set_model (as the spec)
        self._entries: list[_Entry] = []
        self._epoch_now: int | None = None
        self._metric_now: float | None = None
        self._written: TorchSnapshot | None = None
        # The host copies of the last capture, by set_model key: the next capture copies
        # into them (the engine captures only when no save is in flight).
        self._buffers: dict[str, Any] = {}
        super().__init__(gParams, logger, verbose)

    # ----------------------------------------------------------------- the CANDLE API
    def set_model(self, model: Mapping[str, Any]) -> None:
        """Name what to checkpoint: ``{"model": m, "optimizer": o, ...}``.

        ``model`` (an ``nn.Module``, possibly wrapped in DataParallel/DDP) and
        ``optimizer`` are required. Every other entry that has ``state_dict()`` and
        ``load_state_dict()`` (an LR scheduler, a GradScaler, an EMA model) is saved and
        restored under its key, as are ``torch.Generator``, ``random.Random`` and
        ``numpy.random.Generator`` entries. Other entries are ignored (and logged).

        Raises:
            CkptParamError: ``model`` or ``optimizer`` is missing or of the wrong kind,
                or some state could not be read back with ``weights_only=True``.
        """
        if not isinstance(model, Mapping):
            raise CkptParamTypeError(
                f"set_model: expected a dict like {{'model': model, 'optimizer': optimizer}}, "
                f"got {type(model).__name__}"
            )
        missing = [k for k in _REQUIRED if model.get(k) is None]
        if missing:
            given = ", ".join(repr(k) for k in model) or "none"
            raise CkptParamError(
                f"set_model: missing {' and '.join(repr(k) for k in missing)} (keys given: "
                f"{given}); pass {{'model': model, 'optimizer': optimizer, ...}}"
            )
        if not isinstance(model["model"], nn.Module):
            raise CkptParamTypeError(
                f"set_model: 'model' must be a torch.nn.Module, got "
                f"{type(model['model']).__name__}"
            )
        entries = []
        for key, obj in model.items():
            if not isinstance(key, str):
                raise CkptParamTypeError(f"set_model: key {key!r} is not a string")
            kind = _kind(obj)
            if kind is None:
                if key == "optimizer":
                    raise CkptParamTypeError(
                        "set_model: 'optimizer' has no state_dict()/load_state_dict(); give a "
                        f"torch.optim.Optimizer, got {type(obj).__name__}"
                    )
                self.warning(f"set_model: entry {key!r} ({type(obj).__name__}) has no "
                             "state_dict()/load_state_dict(); it is not checkpointed")
                continue
            entries.append(_Entry(key, obj, kind))
        self.model = dict(model)
        self._entries = entries
        for entry in entries:  # fail now, not at the first save or at restart
            _check_loadable(_entry_state(entry), entry.key)
        self.debug("set_model: checkpointing " + ", ".join(e.key for e in entries))

    def ckpt_epoch(self, epoch: int, metric_value: Any = None) -> bool:  # type: ignore[override]
        """Checkpoint the 0-based ``epoch`` just completed, if the policies say so.

        ``metric_value`` (a number or a 0-d tensor) is compared in the direction of
        ``ckpt_save_best_mode`` (with "auto", loss-like metric names are minimized).
        Returns True when a checkpoint was written.
        """
        self._require_model("ckpt_epoch")
        self._epoch_now = int(epoch) + 1
        self._metric_now = _metric_float(metric_value)
        return super().ckpt_epoch(epoch, self.direction.sign, self._metric_now)

    def restart(self, model: Any = None, verbose: bool = True) -> dict[str, Any] | None:
        """Restore the newest usable checkpoint into the objects given to ``set_model``.

        ``model`` may be the ``nn.Module`` given to ``set_model`` (or its
        DataParallel/DDP wrapper, or the module it wraps) or the ``set_model`` dict.
        Returns the checkpoint's info (``J["epoch"]`` is the epoch to resume from) or None.

        Raises:
            CkptParamError: called before ``set_model``, or with another model.
        """
        if model is None:
            self._require_model("restart")
        return super().restart(model, verbose)

    def attach_model(self, model: Any) -> None:
        if isinstance(model, Mapping):
            self.set_model(model)
            return
        if not isinstance(model, nn.Module):
            raise CkptParamTypeError(
                f"restart: model must be a torch.nn.Module or the set_model dict, got "
                f"{type(model).__name__}"
            )
        self._require_model("restart")
        assert self.model is not None
        if unwrap_module(model) is not unwrap_module(self.model["model"]):
            raise CkptParamError(
                "restart: the model given is not the one given to set_model; the optimizer "
                "state belongs to that one. Pass the same module (or call set_model again)"
            )

    def close(self) -> None:
        """Wait for a background save, release the directory and the capture buffers."""
        try:
            super().close()
        finally:
            self._buffers = {}

    def _require_model(self, caller: str) -> None:
        if self.model is None:
            raise CkptParamError(
                f"{caller}: call ckpt.set_model({{'model': model, 'optimizer': optimizer}}) "
                "first; candle-ckpt needs both to save and to restore"
            )

    # ----------------------------------------------------------------- saving
    def capture_state(self) -> TorchSnapshot:
        """Copy every state to host memory (tensors detached and copied to the CPU).

        Tensors are copied into the previous snapshot's buffers where shape, dtype and
        strides still match (fresh ones otherwise): the previous snapshot is overwritten.
        """
        self._require_model("ckpt_epoch")
        return self._snapshot(self._host_states())

    def live_state(self) -> TorchSnapshot:
        """The state for a sync save: CPU tensors as they are (training waits meanwhile).

        Only the containers are copied; tensors that are views into a larger storage,
        or not on the CPU, are still copied (torch.save would write a view's whole
        storage). The capture buffers are left alone: they must never alias live state.
        """
        self._require_model("ckpt_epoch")
        return self._snapshot({e.key: _host_copy(_entry_state(e), e.key, share=True)
                               for e in self._entries})

    def _snapshot(self, states: dict[str, Any]) -> TorchSnapshot:
        rng = capture_rng()
        payload: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": self._epoch_now,
            "model_state_dict": states.pop("model"),
            "optimizer_state_dict": states.pop("optimizer"),
            "loss": self._metric_now,
            "entries": states,
            "rng": rng,
        }
        return TorchSnapshot(payload, [e.key for e in self._entries], sorted(rng))

    def write_state(self, snapshot: TorchSnapshot, sink: FileSink) -> str:
        with sink.open(MODEL_FILE) as f:
            torch.save(snapshot.payload, cast(IO[bytes], f))  # write-only is enough
        # What state_metadata describes; not the tensors (a sync save's are the live ones).
        self._written = TorchSnapshot({}, snapshot.entries, snapshot.rng_states)
        return MODEL_FILE

    def state_metadata(self) -> dict[str, Any]:
        # Called right after write_state, on the same thread: describe what was written.
        snap = self._written
        return {
            "torch_version": torch.__version__,
            "entries": snap.entries if snap is not None else [e.key for e in self._entries],
            "rng_states": snap.rng_states if snap is not None else [],
        }

    # ----------------------------------------------------------------- restoring
    def load_state(self, directory: Path, info: dict[str, Any]) -> None:
        """Restore from a checkpoint directory; all or nothing.

        Raises:
            CkptParamError: no ``set_model`` yet.
            ValueError: the file is not a checkpoint this model can take.
            pickle.UnpicklingError: the file holds anything but tensors and plain data.
        """
        self._require_model("restart")
        name = info.get("model_file") or _LEGACY_MODEL_FILE
        if not isinstance(name, str) or not safe_member(name):
            raise ValueError(f"model_file {name!r} is not a file inside the checkpoint")
        payload = torch.load(directory / name, map_location="cpu", weights_only=True)
        plan = self._plan(payload, name)
        backup = self._capture_for_rollback()
        try:
            self._apply(plan, report=True)
        except BaseException:
            self._apply(backup, report=False)
            raise
        if plan.original_candle:
            what = "weights and optimizer state" if plan.optimizer is not None else "weights"
            self.info(f"{name} was written by the original CANDLE code: {what} restored; it "
                      "holds no RNG states, so the resumed run is not bit-identical to an "
                      "uninterrupted one")

    def _host_states(self) -> dict[str, Any]:
        """Host copies of every entry's state, reusing (and replacing) the buffers."""
        buffers = self._buffers
        states = {e.key: _host_copy(_entry_state(e), e.key, buffers.get(e.key))
                  for e in self._entries}
        self._buffers = dict(states)
        return states

    def _capture_for_rollback(self) -> _Restore:
        """What undoes a failed load: copies of what loading overwrites in place.

        A stock optimizer's load replaces its state tensors instead of writing into them,
        so references to them are enough (a full copy of Adam's state would cost twice
        the model's size). The rest is copied, with ``ckpt_async`` into the capture
        buffers (no save is in flight during restart), which the next capture reuses.
        """
        states: dict[str, Any] = {}
        for e in self._entries:
            if _loads_by_replacing(e.obj):
                states[e.key] = _host_copy(_entry_state(e), e.key, share=True)
                continue
            states[e.key] = _host_copy(_entry_state(e), e.key, self._buffers.get(e.key))
            if self.settings.async_save:  # sync saves never need buffers: do not keep it
                self._buffers[e.key] = states[e.key]
        model = states.pop("model")
        optimizer = states.pop("optimizer")
        return _Restore(model, optimizer, states, capture_rng())

    def _plan(self, payload: Any, name: str) -> _Restore:
        """Check the file against the live objects; nothing is changed yet."""
        if not isinstance(payload, dict):
            raise ValueError(f"{name} holds a {type(payload).__name__}, not a checkpoint dict")
        ours = payload.get("format") == FORMAT
        if ours and payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{name}: format_version {payload.get('format_version')!r} "
                             f"is not supported (this candle-ckpt reads {FORMAT_VERSION})")
        if "model_state_dict" not in payload:
            raise ValueError(f"{name} has no 'model_state_dict' (keys: {list(payload)[:8]})")
        assert self.model is not None
        module = unwrap_module(self.model["model"])
        model_sd = _match_model(module, payload["model_state_dict"], name)
        optimizer_sd = payload.get("optimizer_state_dict")
        if optimizer_sd is not None and not isinstance(optimizer_sd, dict):
            raise ValueError(f"{name}: optimizer_state_dict is a {type(optimizer_sd).__name__}")
        if optimizer_sd is None:
            self.warning(f"{name} holds no optimizer state; the optimizer starts afresh")
        saved = payload.get("entries") or {}
        if not isinstance(saved, dict):
            raise ValueError(f"{name}: 'entries' is a {type(saved).__name__}, expected a dict")
        entries = {}
        for entry in self._entries:
            if entry.key in _REQUIRED:
                continue
            if entry.key in saved:
                entries[entry.key] = saved[entry.key]
            else:
                self.warning(f"{name} holds no state for {entry.key!r}; it is left as it is")
        unknown = sorted(set(saved) - {e.key for e in self._entries})
        if unknown:
            self.warning(f"{name} holds state for {', '.join(map(repr, unknown))}, which "
                         "set_model did not name; not restored")
        rng = payload.get("rng")
        if rng is not None and not isinstance(rng, dict):
            raise ValueError(f"{name}: 'rng' is a {type(rng).__name__}, expected a dict")
        return _Restore(model_sd, optimizer_sd, entries, rng, original_candle=not ours)

    def _apply(self, plan: _Restore, report: bool) -> None:
        assert self.model is not None
        unwrap_module(self.model["model"]).load_state_dict(plan.model)
        if plan.optimizer is not None:
            self.model["optimizer"].load_state_dict(plan.optimizer)
        by_key = {e.key: e for e in self._entries}
        for key, state in plan.entries.items():
            entry = by_key[key]
            if entry.kind == "state_dict" and state == {} and entry.obj.state_dict() == {}:
                continue  # e.g. a disabled GradScaler, which refuses an empty state
            _load_entry(entry, state)
        if plan.rng is not None:
            for problem in restore_rng(plan.rng):
                if report:
                    self.warning(problem)


# ------------------------------------------------------------------------------ entries
def _kind(obj: Any) -> str | None:
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


def _entry_state(entry: _Entry) -> Any:
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


def _load_entry(entry: _Entry, state: Any) -> None:
    obj = entry.obj
    if entry.kind == "torch_generator":
        obj.set_state(state)
    elif entry.kind == "python_random":
        obj.setstate(_tuples(state))
    elif entry.kind == "numpy_generator":
        obj.bit_generator.state = state
    else:
        obj.load_state_dict(state)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _match_model(module: nn.Module, state: Any, name: str) -> dict[str, Any]:
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
        raise ValueError(
            f"{name} does not fit the model: missing {_few(missing)}, unexpected "
            f"{_few(unexpected)}"
        )
    for key, value in expected.items():
        got = state[key]
        if isinstance(value, torch.Tensor) and (
            not isinstance(got, torch.Tensor) or got.shape != value.shape
        ):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(
                f"{name} does not fit the model: {key} is {shape} in the checkpoint, "
                f"{tuple(value.shape)} in the model"
            )
    return state


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _metric_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CkptParamError(
                f"metric_value: a tensor of shape {tuple(value.shape)} is not a number; "
                "pass the epoch's metric (a float or a one-element tensor)"
            )
        return float(value.detach().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CkptParamError(
            f"metric_value: value {value!r} is not a number; pass the epoch's metric"
        ) from None


# ------------------------------------------------------------------------------ copying
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def _host_copy(value: Any, where: str, into: Any = None, share: bool = False) -> Any:
    """Deep-copy ``value`` to host memory, keeping only what weights_only can read back.

    ``into`` is an earlier copy of the same state: its tensors are overwritten where they
    fit (same shape, dtype and strides), which saves allocating (and page-faulting in)
    the whole state again; anything that does not fit is copied afresh. With ``share``,
    compact CPU tensors are not copied at all (detached views of the live ones).

    Raises:
        CkptParamError: ``where`` holds an object torch.load(weights_only=True) refuses.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        source = value.detach()
        if share and _compact_cpu(source):
            return source
        if _fits(into, source):
            return into.copy_(source)
        return source.to("cpu", copy=True)
    if kind is bytearray:
        return bytearray(value)
    if kind in (torch.Size, torch.dtype, torch.device):
        return value
    if kind in (dict, OrderedDict, Counter):
        old = into if type(into) is kind else {}
        out: Any = kind({_host_copy(k, where): _host_copy(v, f"{where}[{k!r}]", old.get(k), share)
                    for k, v in value.items()})
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:  # module versions, used by load_state_dict
            out._metadata = _host_copy(metadata, where)
        return out
    if kind in (list, tuple):
        olds = into if type(into) is kind and len(into) == len(value) else [None] * len(value)
        return kind(_host_copy(v, f"{where}[{i}]", o, share)
                    for i, (v, o) in enumerate(zip(value, olds, strict=True)))
    if kind is set:
        return {_host_copy(v, where) for v in value}
    if _np is not None and isinstance(value, _np.generic) and value.dtype.kind in "biufc":
        return value.item()  # a numpy scalar: same value as a Python number
    raise CkptParamError(
        f"cannot checkpoint {where}: it holds a {kind.__module__}.{kind.__qualname__}, which "
        "torch.load(weights_only=True) cannot read back. State must consist of tensors, "
        "numbers, strings, bytes and dict/list/tuple/set containers"
    )


def _loads_by_replacing(obj: Any) -> bool:
    """Does ``obj.load_state_dict`` swap in new tensors, leaving its old ones untouched?"""
    optimizer = torch.optim.Optimizer
    return isinstance(obj, optimizer) and type(obj).load_state_dict is optimizer.load_state_dict


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


def _fits(buffer: Any, source: torch.Tensor) -> bool:
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


def _check_loadable(value: Any, where: str) -> None:
    """Raise CkptParamError if ``value`` holds what weights_only loading refuses."""
    kind = type(value)
    if kind in _SCALARS or isinstance(value, torch.Tensor) or kind in (
        bytearray, torch.Size, torch.dtype, torch.device
    ):
        return
    if kind in (dict, OrderedDict, Counter):
        for k, v in value.items():
            _check_loadable(k, where)
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if kind in (list, tuple, set):
        for i, v in enumerate(value):
            _check_loadable(v, f"{where}[{i}]")
        return
    _host_copy(value, where)  # numpy scalars pass; anything else raises there


# ------------------------------------------------------------------------------ RNG states
def capture_rng() -> dict[str, Any]:
    """The global RNG states: torch CPU, CUDA (when in use), numpy, Python ``random``."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    if _np is not None:
        name, keys, pos, has_gauss, cached = _np.random.get_state(legacy=True)
        rng["numpy"] = {
            "bit_generator": str(name),
            "keys": torch.from_numpy(_np.asarray(keys, dtype=_np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    rng["python"] = random.getstate()
    return rng


def restore_rng(rng: dict[str, Any]) -> list[str]:
    """Set the global RNG states saved by :func:`capture_rng`; problems, if any."""
    problems = []
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            problems.append("the checkpoint holds CUDA RNG states but CUDA is not available "
                            "here; they are not restored")
        elif len(cuda) != torch.cuda.device_count():
            problems.append(f"the checkpoint holds {len(cuda)} CUDA RNG states, this machine "
                            f"has {torch.cuda.device_count()} devices; they are not restored")
        else:
            torch.cuda.set_rng_state_all(cuda)
    state = rng.get("numpy")
    if state is not None:
        if _np is None:
            problems.append("numpy is not installed; its RNG state is not restored")
        else:
            keys = state["keys"].numpy().astype(_np.uint32)
            _np.random.set_state((state["bit_generator"], keys, state["pos"],
                                  state["has_gauss"], state["cached_gaussian"]))
    if "python" in rng:
        random.setstate(_tuples(rng["python"]))
    return problems
