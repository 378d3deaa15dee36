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

import os
import random
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from ..backend import Restored, Written
from ..coordination import Coordinator, LocalCoordinator, TorchCoordinator
from ..engine import CandleCkpt
from ..errors import CheckpointMismatchError, CkptParamError, CkptParamTypeError
from ..logs import CkptLog
from ..storage.integrity import safe_member
from ..storage.safeio import open_regular
from ..storage.sink import FileSink
from . import torch_dcp

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
    sharded: dict[str, Any] | None = None  # model/optimizer shards, written with DCP


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
    notes: list[str] = field(default_factory=list)
    sharded: dict[str, Any] | None = None  # model/optimizer read with DCP


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


class TorchBackend:
    """The backend protocol for torch: what ``set_model`` named, captured, written, loaded."""

    name = "torch"

    def __init__(self, log: CkptLog, coord: Coordinator | None = None) -> None:
        self.log = log
        # Multi-process: rank 0 writes the (replicated) model once, every rank its RNGs;
        # sharded (DTensor) model/optimizer state goes through DCP on every rank.
        self.coord = coord if coord is not None else LocalCoordinator()
        self.sharded = False
        self.model: dict[str, Any] | None = None  # the dict given to set_model (as the spec)
        self.entries: list[_Entry] = []
        # Set by CandleCkptPyTorch.ckpt_epoch right before a capture (original CANDLE keys).
        self.progress: tuple[int | None, float | None] = (None, None)
        # The host copies of the last capture, by set_model key: the next capture copies
        # into them (the engine captures only when no save is in flight).
        self.buffers: dict[str, Any] = {}
        # The same for sync saves: host copies of what cannot be written as it is (GPU
        # tensors, views), pinned for GPU sources. Compact CPU tensors are written live.
        self.live_buffers: dict[str, Any] = {}

    # ----------------------------------------------------------------- what to save
    def set_model(self, model: Mapping[str, Any]) -> None:
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
                self.log.warning(f"set_model: entry {key!r} ({type(obj).__name__}) has no "
                                 "state_dict()/load_state_dict(); it is not checkpointed")
                continue
            entries.append(_Entry(key, obj, kind))
        for entry in entries:  # fail now, not at the first save or at restart
            _check_loadable(_entry_state(entry), entry.key)
        self.model = dict(model)
        self.entries = entries
        self.sharded = torch_dcp.is_sharded(unwrap_module(model["model"]))
        if self.sharded and not isinstance(self.coord, TorchCoordinator):
            raise CkptParamError(
                "set_model: the model's state is sharded (DTensor), but no torch.distributed "
                "process group was initialized when the engine was constructed; call "
                "dist.init_process_group() before CandleCkptPyTorch(...)")
        self.log.debug("set_model: checkpointing " + ", ".join(e.key for e in entries))

    def require_model(self, caller: str) -> dict[str, Any]:
        if self.model is None:
            raise CkptParamError(
                f"{caller}: call ckpt.set_model({{'model': model, 'optimizer': optimizer}}) "
                "first; candle-ckpt needs both to save and to restore"
            )
        return self.model

    def attach(self, model: Any) -> None:
        """``restart(model)``: the set_model dict, or the module given to set_model."""
        if isinstance(model, Mapping):
            self.set_model(model)
            return
        if not isinstance(model, nn.Module):
            raise CkptParamTypeError(
                f"restart: model must be a torch.nn.Module or the set_model dict, got "
                f"{type(model).__name__}"
            )
        objects = self.require_model("restart")
        if unwrap_module(model) is not unwrap_module(objects["model"]):
            raise CkptParamError(
                "restart: the model given is not the one given to set_model; the optimizer "
                "state belongs to that one. Pass the same module (or call set_model again)"
            )

    # ----------------------------------------------------------------- saving
    def capture(self, live: bool) -> TorchSnapshot:
        """The state of every entry: host copies, or (``live``) the CPU tensors as they are.

        A copy reuses the previous capture's tensors where shape, dtype and strides still
        match. A live capture copies only containers, and tensors that are views into a
        larger storage or not on the CPU (torch.save would write a view's whole storage);
        it never becomes a capture buffer, which must never alias live state.
        """
        objects = self.require_model("ckpt_epoch")
        sharded = None
        if self.sharded:
            sharded = torch_dcp.capture(unwrap_module(objects["model"]), objects["optimizer"],
                                        copy_=not live)
        if not self.coord.is_writer:
            rng_only = capture_rng()  # the replicated state is rank 0's to write
            return TorchSnapshot({"rng": rng_only}, [], sorted(rng_only), sharded)
        local = [e for e in self.entries if not (self.sharded and e.key in _REQUIRED)]
        copies = _Copies(share=live)
        if live:
            states = {e.key: copies.copy(_entry_state(e), e.key, self.live_buffers.get(e.key))
                      for e in local}
            # What had to be copied (GPU tensors, views) is copied into the same host
            # buffers next time; the live tensors shared above never become buffers.
            self.live_buffers = {k: copies.owned(v) for k, v in states.items()}
        else:
            states = {e.key: copies.copy(_entry_state(e), e.key, self.buffers.get(e.key))
                      for e in local}
            self.buffers = dict(states)
        copies.wait()  # device-to-host copies are asynchronous; the bytes must be there
        rng = capture_rng()
        epoch, loss = self.progress
        optimizer = type(self.require_model("ckpt_epoch")["optimizer"])
        payload: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": epoch,
            "model_state_dict": states.pop("model", None),  # None: sharded, DCP files
            "optimizer_state_dict": states.pop("optimizer", None),
            "optimizer_type": _type_name(optimizer),
            "loss": loss,
            "entries": states,
            "rng": rng,
        }
        if sharded is not None:
            payload["sharded"] = "dcp"
        return TorchSnapshot(payload, [e.key for e in self.entries], sorted(rng), sharded)

    def write(self, snapshot: TorchSnapshot, sink: FileSink) -> Written:
        coord = self.coord
        shards: list[str] = []
        if snapshot.sharded is not None:
            assert isinstance(coord, TorchCoordinator)  # set_model refuses it without one
            # First: DCP's save is a collective; no rank may fail before it alone.
            shards = torch_dcp.save(snapshot.sharded, sink.directory, coord.group,
                                    coord.is_writer)
            for shard in shards:
                sink.adopt(shard)  # fsynced (again) and checksummed by finish()
        if coord.multi_process:
            name = write_rank_rng(sink, coord, snapshot.payload["rng"])
            if not coord.is_writer:
                return Written(name, {})
        with sink.open(MODEL_FILE) as f, _without_zip_crc32():
            torch.save(snapshot.payload, cast(IO[bytes], f))  # write-only is enough
        info: dict[str, Any] = {
            "torch_version": torch.__version__,
            "entries": snapshot.entries,
            "rng_states": snapshot.rng_states,
            "optimizer_type": snapshot.payload.get("optimizer_type"),
        }
        if coord.multi_process:
            info["world_size"] = coord.world_size
            info["rank_rng_files"] = [rank_file("rng", r) for r in range(coord.world_size)]
        if snapshot.sharded is not None:
            info["sharded"] = "dcp"
        return Written(MODEL_FILE, info)

    def release_buffers(self) -> None:
        self.buffers = {}
        self.live_buffers = {}

    def prefill_buffers(self) -> None:
        """Allocate (and fault in) the capture buffers now, so that the first background
        save's capture is a plain copy like every later one, not an allocation too."""
        self.require_model("set_model")
        if not self.coord.is_writer:
            return  # its captures hold only its RNG states
        copies = _Copies()
        self.buffers = {e.key: copies.copy(_entry_state(e), e.key, self.buffers.get(e.key))
                        for e in self.entries if not (self.sharded and e.key in _REQUIRED)}
        copies.wait()

    # ----------------------------------------------------------------- restoring
    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        """Read the model file and check all of it against the live objects; change nothing.

        Raises:
            CkptParamError: no ``set_model`` yet.
            CheckpointMismatchError: the checkpoint does not fit the model or optimizer.
            ValueError, pickle.UnpicklingError, RuntimeError: the file is damaged or holds
                anything but tensors and plain data.
        """
        self.require_model("restart")
        name = info.get("model_file") or _LEGACY_MODEL_FILE
        if not isinstance(name, str) or not safe_member(name):
            raise ValueError(f"model_file {name!r} is not a file inside the checkpoint")
        objects = self.require_model("restart")
        sharded_info = info.get("sharded") == "dcp"
        if sharded_info != self.sharded:
            raise CheckpointMismatchError(
                f"{directory}: " + ("the checkpoint holds sharded (DCP) state, the model is "
                                    "not sharded" if sharded_info else "the model is sharded "
                                    "(DTensor), the checkpoint holds replicated state"))
        sharded = None
        notes: list[str] = []
        if self.sharded:
            assert isinstance(self.coord, TorchCoordinator)
            # First: DCP's load is a collective (and reshards to this world size).
            sharded = torch_dcp.plan_load(directory, unwrap_module(objects["model"]),
                                          objects["optimizer"], self.coord.group)
            if info.get("world_size", 1) != self.coord.world_size:
                notes.append(
                    f"{directory} was saved by {info.get('world_size', 1)} rank(s), this run "
                    f"has {self.coord.world_size}: the sharded state was resharded, the "
                    "per-rank RNG states are not restored (the run is not bit-identical to "
                    "an uninterrupted one)")
        ranks_rng = None
        if not notes:
            ranks_rng = load_rank_rng(directory, info, self.coord)  # before the big file
        payload = _load_regular(directory / name)
        plan = self._plan(payload, name, sharded=self.sharded)
        plan.sharded = sharded
        plan.notes.extend(notes)
        if ranks_rng is not None:
            plan.rng = ranks_rng
        elif notes:
            plan.rng = None
        notes = list(plan.notes)
        if plan.original_candle:
            what = "weights and optimizer state" if plan.optimizer is not None else "weights"
            notes.append(f"{name} was written by the original CANDLE code: {what} restored; it "
                         "holds no RNG states, so the resumed run is not bit-identical to an "
                         "uninterrupted one")
        return Restored(apply=lambda: self._apply(plan), notes=notes)

    def _plan(self, payload: Any, name: str, sharded: bool = False) -> _Restore:
        """Check the file against the live objects; nothing is changed yet."""
        if not isinstance(payload, dict):
            raise ValueError(f"{name} holds a {type(payload).__name__}, not a checkpoint dict")
        ours = payload.get("format") == FORMAT
        if ours and payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{name}: format_version {payload.get('format_version')!r} "
                             f"is not supported (this candle-ckpt reads {FORMAT_VERSION})")
        if "model_state_dict" not in payload:
            raise ValueError(f"{name} has no 'model_state_dict' (keys: {list(payload)[:8]})")
        objects = self.require_model("restart")
        module = unwrap_module(objects["model"])
        model_sd = {} if sharded else _match_model(module, payload["model_state_dict"], name)
        notes: list[str] = []
        optimizer_sd = payload.get("optimizer_state_dict")
        if sharded:
            pass  # model and optimizer are DCP's files, checked by torch_dcp.plan_load
        elif optimizer_sd is None:
            notes.append(f"{name} holds no optimizer state; the optimizer starts afresh")
        else:
            _match_optimizer(objects["optimizer"], optimizer_sd, payload.get("optimizer_type"),
                             name)
        saved = payload.get("entries") or {}
        if not isinstance(saved, dict):
            raise ValueError(f"{name}: 'entries' is a {type(saved).__name__}, expected a dict")
        entries = {}
        for entry in self.entries:
            if entry.key in _REQUIRED:
                continue
            if entry.key in saved:
                _check_entry(entry, saved[entry.key], name)
                entries[entry.key] = saved[entry.key]
            else:
                notes.append(f"{name} holds no state for {entry.key!r}; it is left as it is")
        unknown = sorted(set(saved) - {e.key for e in self.entries})
        if unknown:
            notes.append(f"{name} holds state for {', '.join(map(repr, unknown))}, which "
                         "set_model did not name; not restored")
        rng = payload.get("rng")
        if rng is not None:
            check_rng(rng, name)
        return _Restore(model_sd, optimizer_sd, entries, rng, original_candle=not ours,
                        notes=notes)

    def _apply(self, plan: _Restore) -> list[str]:
        """Copy a checked plan into the live objects; problems worth a warning."""
        objects = self.require_model("restart")
        if plan.sharded is not None:
            torch_dcp.apply(unwrap_module(objects["model"]), objects["optimizer"], plan.sharded)
        else:
            unwrap_module(objects["model"]).load_state_dict(plan.model)
            if plan.optimizer is not None:
                objects["optimizer"].load_state_dict(plan.optimizer)
        by_key = {e.key: e for e in self.entries}
        for key, state in plan.entries.items():
            entry = by_key[key]
            if entry.kind == "state_dict" and state == {} and entry.obj.state_dict() == {}:
                continue  # e.g. a disabled GradScaler, which refuses an empty state
            _load_entry(entry, state)
        return restore_rng(plan.rng) if plan.rng is not None else []


class CandleCkptPyTorch(CandleCkpt):
    """Checkpoint/restart for a PyTorch model, its optimizer and any stateful helpers.

    Args:
        gParams: dict or argparse.Namespace with the ``ckpt_*`` keys and ``epochs``.
        logger: "DEFAULT" (console), None or a ``logging.Logger``.
        verbose: console verbosity of the default logger.
    """

    backend_name = "torch"
    backend: TorchBackend

    def __init__(self, gParams: Any = None, logger: Any = "DEFAULT", verbose: bool = True):
        super().__init__(gParams, logger, verbose)
        # After the first on_epoch_begin(), ckpt_epoch() only records (epoch, metric)
        # here and the checkpoint is taken when the next epoch begins (or at on_train_end).
        self._save_at_epoch_begin = False
        self._pending_epoch: tuple[int, float | None] | None = None

    def _new_backend(self) -> TorchBackend:
        return TorchBackend(self._log, self._coord)

    def _new_coordinator(self) -> Coordinator:
        """Under an initialized torch.distributed process group: one engine per rank."""
        return TorchCoordinator.from_torch() or LocalCoordinator()

    @property
    def model(self) -> dict[str, Any] | None:
        """The dict given to ``set_model``."""
        return self.backend.model

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
        self.backend.set_model(model)
        self._preempt.start()  # stop-signal handlers, until on_train_end() or close()
        if self.settings.async_save:
            self.backend.prefill_buffers()

    def ckpt_batch(self, epoch: int, batch: int) -> bool:
        """Call after each optimizer step (0-based epoch and batch, like ckpt_epoch).

        Returns True when a stop signal (``ckpt_signals``) or the wall-clock limit made it
        commit a mid-epoch checkpoint: end the training loop then (and call
        ``on_train_end()``). On restart, ``J["batch"]`` batches of epoch ``J["epoch"]``
        are done: skip them.
        """
        self.backend.require_model("ckpt_batch")
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            self.backend.progress = (epoch, None)
        return super().ckpt_batch(epoch, batch)

    def ckpt_epoch(self, epoch: int, metric_value: Any = None) -> bool:  # type: ignore[override]
        """Checkpoint the 0-based ``epoch`` just completed, if the policies say so.

        ``metric_value`` (a number or a 0-d tensor) is compared in the direction of
        ``ckpt_save_best_mode`` (with "auto", loss-like metric names are minimized).
        Returns True when a checkpoint was written.

        Precondition for an exact resume: the checkpoint holds every state (the global
        torch/CUDA/numpy/Python RNGs, the scheduler, ...) as it is *now*, and a resumed run
        starts epoch ``epoch + 1`` from exactly that. Anything between this call and the
        next epoch that draws from a global RNG or steps a saved object (a validation
        ``DataLoader(shuffle=True)``, which draws a seed from torch's RNG; a
        ``scheduler.step()``) is missing from the checkpoint, and the resumed run drifts
        from the uninterrupted one. Either call ``ckpt_epoch`` as the epoch's last step,
        or call :meth:`on_epoch_begin` first thing in every epoch: then this call only
        records ``epoch`` and ``metric_value`` (and returns False), and the checkpoint is
        taken when the next epoch begins (the last one by :meth:`on_train_end`).
        """
        self.backend.require_model("ckpt_epoch")
        metric = _metric_float(metric_value)
        if self._save_at_epoch_begin:
            self._pending_epoch = (epoch, metric)
            return False
        return self._save_epoch(epoch, metric)

    def on_epoch_begin(self, epoch: int) -> bool:
        """Call first thing in every epoch (0-based) to make ``ckpt_epoch`` exact anywhere.

        It takes the checkpoint the previous epoch's ``ckpt_epoch`` asked for, now: with
        the RNG states, the scheduler and every other entry as this epoch starts, which
        is what a resumed run must start from, whatever ran after ``ckpt_epoch``
        (validation, ``scheduler.step()``). Returns True when that checkpoint was
        written. Once called, ``ckpt_epoch`` defers to it for the rest of the run, and
        :meth:`on_train_end` takes the last epoch's checkpoint; a process that dies
        between ``ckpt_epoch`` and the next epoch loses that epoch's checkpoint (the
        previous one is intact).
        """
        self.backend.require_model("on_epoch_begin")
        self._save_at_epoch_begin = True
        return self._save_pending()

    def on_train_end(self, logs: Any = None) -> None:
        """Take the last epoch's checkpoint if :meth:`on_epoch_begin` deferred it; finish."""
        try:
            self._save_pending()
        finally:
            super().on_train_end(logs)

    def _save_pending(self) -> bool:
        pending, self._pending_epoch = getattr(self, "_pending_epoch", None), None
        return pending is not None and self._save_epoch(*pending)

    def _save_epoch(self, epoch: int, metric: float | None) -> bool:
        self.backend.progress = (int(epoch) + 1 if not isinstance(epoch, bool) else None,
                                 metric)
        return super().ckpt_epoch(epoch, self.direction.sign, metric)

    def restart(self, model: Any = None, verbose: Any = True) -> dict[str, Any] | None:
        """Restore the newest usable checkpoint into the objects given to ``set_model``.

        ``model`` may be the ``nn.Module`` given to ``set_model`` (or its
        DataParallel/DDP wrapper, or the module it wraps) or the ``set_model`` dict.
        ``restart()``, ``restart(gParameters, model)`` and ``restart(gParameters)`` are
        accepted too (hyperparameters passed are not needed here and ignored).
        Returns the checkpoint's info (``J["epoch"]`` is the epoch to resume from) or None.

        Raises:
            CkptParamError: called before ``set_model``, or with another model.
            CheckpointMismatchError: the checkpoint does not fit the model or optimizer.
        """
        model, verbose = self._restart_args(model, verbose)
        if model is None:
            self.backend.require_model("restart")
        J = super().restart(model, verbose)
        if J is not None and self.settings.async_save:
            self.backend.prefill_buffers()  # the restored optimizer state has its size now
        return J

    def _attach_model(self, model: Any) -> None:
        self.backend.attach(model)

    def _is_model(self, obj: Any) -> bool:
        return isinstance(obj, nn.Module) or _is_set_model_dict(obj)

    def _has_model(self) -> bool:
        return self.backend.model is not None

    def capture_state(self) -> TorchSnapshot:
        """A host copy of everything a checkpoint holds (what an async save writes)."""
        return self.backend.capture(live=False)

    def close(self) -> None:
        """Wait for a background save, release the directory and the capture buffers."""
        pending, self._pending_epoch = getattr(self, "_pending_epoch", None), None
        if pending is not None:
            self._log.warning(f"epoch {pending[0] + 1}: its checkpoint was deferred to the "
                              "next on_epoch_begin() and is not written; call "
                              "on_train_end() to end a run")
        try:
            super().close()
        finally:
            backend = getattr(self, "backend", None)
            if isinstance(backend, TorchBackend):
                backend.release_buffers()


def _load_regular(path: Path) -> Any:
    """torch.load of a regular file, opened without following a link (checked once).

    Where /proc exists, torch reads the very file descriptor that was checked, so a
    name swapped for a link after validation is never followed.
    """
    fd = open_regular(path, os.O_RDONLY, role="the model file")
    try:
        proc = f"/proc/self/fd/{fd}"
        source: Any = proc if os.path.exists(proc) else path
        return torch.load(source, map_location="cpu", weights_only=True)
    finally:
        os.close(fd)


_crc_guard = threading.Lock()


@contextmanager
def _without_zip_crc32() -> Iterator[None]:
    """torch.save without the zip CRC32 of every record, then the previous setting back.

    The CRC32 costs about half a second per GB (as much as half the disk's own time on
    our machines) and buys nothing: torch.load never checks it (a flipped byte in a
    tensor loads silently, tested). The checkpoint's own manifest does the checking: the
    sizes always, xxh3 checksums with ``ckpt_checksum``. The switch is process-wide, so
    a torch.save of the user's own running at the same instant also skips it (its file
    still loads; only zip tools that test CRCs would complain).
    """
    serialization = torch.serialization
    if not hasattr(serialization, "set_crc32_options"):  # torch < 2.6: always computed
        yield
        return
    with _crc_guard:
        previous = serialization.get_crc32_options()
        serialization.set_crc32_options(False)
        try:
            yield
        finally:
            serialization.set_crc32_options(previous)


# ------------------------------------------------------------------------------ entries
def _is_set_model_dict(obj: Any) -> bool:
    """A dict of what to checkpoint (``{"model": m, "optimizer": o}``), not gParameters
    (which may hold a "model" key too, naming one)."""
    return isinstance(obj, Mapping) and (
        isinstance(obj.get("model"), nn.Module)
        or isinstance(obj.get("optimizer"), torch.optim.Optimizer))


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
        raise CheckpointMismatchError(
            f"{name} does not fit the model: missing {_few(missing)}, unexpected "
            f"{_few(unexpected)}"
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


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _match_optimizer(optimizer: Any, saved: Any, saved_type: Any, name: str) -> None:
    """Raise unless ``saved`` (an optimizer state_dict) can be loaded into ``optimizer``.

    Checked: the optimizer's type (when the checkpoint records it), the parameter groups
    and their sizes, and that every per-parameter state tensor has its parameter's shape.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise ValueError(f"{name}: optimizer_state_dict is not an optimizer state "
                         "(needs 'state' and 'param_groups')")
    live_type = _type_name(type(optimizer))
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


def _check_entry(entry: _Entry, state: Any, name: str) -> None:
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
        _match_optimizer(entry.obj, state, None, f"{name} ({entry.key!r})")


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


class _Copies:
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
        if kind in _SCALARS:
            return value
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
            _check_tensor_type(tensor, where)
            return self._tensor(tensor, into)
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

    def _tensor(self, source: torch.Tensor, into: Any) -> torch.Tensor:
        if self.share and _compact_cpu(source):
            self.shared.add(id(source))
            return source
        on_gpu = source.device.type == "cuda"
        if _fits(into, source):
            if on_gpu:
                self.devices.add(source.device)
            return into.copy_(source, non_blocking=on_gpu and into.is_pinned())
        if on_gpu and source.layout == torch.strided:
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


def _check_tensor_type(tensor: torch.Tensor, where: str) -> None:
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


def _check_loadable(value: Any, where: str) -> None:
    """Raise CkptParamError if ``value`` holds what weights_only loading refuses."""
    kind = type(value)
    if isinstance(value, torch.Tensor):
        _check_tensor_type(value.detach(), where)
        return
    if kind in _SCALARS or kind in (bytearray, torch.Size, torch.dtype, torch.device):
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
    _Copies().copy(value, where)  # numpy scalars pass; anything else raises there


# ------------------------------------------------------------------------------ RNG states
def write_rank_rng(sink: FileSink, coord: Coordinator, rng: dict[str, Any]) -> str:
    """This rank's RNG states, in a file of its own (ranks are seeded differently)."""
    name = rank_file("rng", coord.rank)
    with sink.open(name) as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "rank": coord.rank,
                    "world_size": coord.world_size, "rng": rng}, cast(IO[bytes], f))
    return name


def load_rank_rng(directory: Path, info: dict[str, Any],
                  coord: Coordinator) -> dict[str, Any] | None:
    """This rank's saved RNG states (checked, not set); None: use the model file's.

    Raises:
        CheckpointMismatchError: the checkpoint was saved by another number of ranks
            (per-rank RNG states do not map onto another world size).
        ValueError: the rank's file is damaged.
    """
    saved = info.get("world_size", 1)
    world = coord.world_size
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise ValueError(f"ckpt-info.json: world_size {saved!r} is not a positive integer")
    if saved != world:
        raise CheckpointMismatchError(
            f"{directory} was saved by {saved} rank(s), each with its own RNG states "
            f"(rng-rank-NNNNN.pt); this run has {world}. Per-rank RNG states cannot be "
            f"mapped onto another number of ranks: restart with {saved} rank(s), or use "
            "another ckpt_directory (or ckpt_restart_mode='off') to start afresh"
        )
    if not coord.multi_process or "rank_rng_files" not in info:
        return None  # a single-process checkpoint: its model file holds rank 0's RNGs
    name = rank_file("rng", coord.rank)
    payload = _load_regular(directory / name)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT \
            or payload.get("rank") != coord.rank:
        raise ValueError(f"{name} is not the RNG file of rank {coord.rank}")
    rng = payload.get("rng")
    check_rng(rng, name)
    return cast(dict[str, Any], rng)


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


def check_rng(rng: Any, name: str) -> None:
    """Raise ValueError unless ``rng`` is what :func:`capture_rng` wrote (nothing set yet)."""
    if not isinstance(rng, dict):
        raise ValueError(f"{name}: 'rng' is a {type(rng).__name__}, expected a dict")
    state = rng.get("torch")
    live = torch.get_rng_state()
    if state is not None and (not isinstance(state, torch.Tensor) or state.dtype != live.dtype
                              or state.shape != live.shape):
        raise ValueError(f"{name}: rng['torch'] is not a torch CPU generator state")
    cuda = rng.get("cuda")
    if cuda is not None and (not isinstance(cuda, list) or not all(
            isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)):
        raise ValueError(f"{name}: rng['cuda'] is not a list of CUDA generator states")
    numpy_state = rng.get("numpy")
    if numpy_state is not None:
        keys = numpy_state.get("keys") if isinstance(numpy_state, dict) else None
        if not isinstance(keys, torch.Tensor) or keys.numel() != 624 or not all(
                isinstance(numpy_state.get(k), t) for k, t in
                (("bit_generator", str), ("pos", int), ("has_gauss", int),
                 ("cached_gaussian", float))):
            raise ValueError(f"{name}: rng['numpy'] is not a numpy RandomState state")
    python = rng.get("python")
    if python is not None:
        try:
            random.Random().setstate(_tuples(python))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: rng['python'] is not a random state: {err}") from None


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


def rank_file(kind: str, rank: int) -> str:
    """The name of a rank's own file in a checkpoint, e.g. ``rng-rank-00001.pt``."""
    return f"{kind}-rank-{rank:05d}.pt"
