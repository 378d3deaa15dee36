"""``TorchBackend``: the backend protocol (``backends/base.py``) for torch state.

Each checkpoint is one ``model.pt`` written by ``torch.save``: the original CANDLE keys
(``epoch``, ``model_state_dict``, ``optimizer_state_dict``, ``loss``) plus the state of
every other ``set_model`` entry and the global RNG states. It holds only tensors,
numbers, strings and containers, so it is read back with
``torch.load(weights_only=True)``: a checkpoint file can never run code. ``set_model``
and every capture check that, and refuse state that could not be read back that way,
rather than write a checkpoint that restart could not load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...coordination import Coordinator, LocalCoordinator, TorchCoordinator
from ...errors import CheckpointMismatchError, CkptParamError, CkptParamTypeError
from ...logs import CkptLog
from .. import rng as global_rng
from ..base import UNKNOWN_PROGRESS, CaptureBuffers, Progress, Restored, Written, member_name
from . import dcp, stream
from . import objects as tensor_objects
from .copies import Copies, check_loadable
from .entries import REQUIRED, Entry, entry_kind, entry_state, load_entry, unwrap_module
from .files import (
    FORMAT,
    FORMAT_VERSION,
    FORMAT_VERSION_OBJECTS,
    LEGACY_MODEL_FILE,
    MODEL_FILE,
    load_rank_rng,
    load_regular,
    rank_file,
    save,
    write_rank_rng,
)
from .matching import RestorePlan, plan_restore, type_name
from .order import EpochOrders, OrderRecord, order_from_file, order_to_file

if TYPE_CHECKING:
    from ...storage.sink import FileSink


@dataclass
class TorchSnapshot:
    """A host-memory copy of everything one checkpoint holds."""

    payload: dict[str, Any]
    entries: list[str]
    rng_states: list[str]
    progress: Progress = UNKNOWN_PROGRESS  # where training was when it was captured
    sharded: dict[str, Any] | None = None  # model/optimizer shards, written with DCP


class TorchBackend:
    """The backend protocol for torch: what ``set_model`` named, captured, written, loaded."""

    def __init__(self, log: CkptLog, coord: Coordinator | None = None) -> None:
        self.log = log
        # Multi-process: rank 0 writes the (replicated) model once, every rank its RNGs;
        # sharded (DTensor) model/optimizer state goes through DCP on every rank.
        self.coord = coord if coord is not None else LocalCoordinator()
        self.sharded = False
        self.model: dict[str, Any] | None = None  # the dict given to set_model (as the spec)
        self.entries: list[Entry] = []
        # Host copies of the last captures, by set_model key, copied into next time. A
        # sync save keeps only what cannot be written as it is (GPU tensors, views);
        # compact CPU tensors are written live.
        self.buffers = CaptureBuffers()
        # The epoch order of the loader iterated through batches(), for mid-epoch saves.
        self.order = EpochOrders(log)

    # ----------------------------------------------------------------- what to save
    def set_model(self, model: Mapping[str, Any]) -> None:
        if not isinstance(model, Mapping):
            raise CkptParamTypeError(
                f"set_model: expected a dict like {{'model': model, 'optimizer': optimizer}}, "
                f"got {type(model).__name__}"
            )
        missing = [k for k in REQUIRED if model.get(k) is None]
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
            kind = entry_kind(obj)
            if kind is None:
                if key == "optimizer":
                    raise CkptParamTypeError(
                        "set_model: 'optimizer' has no state_dict()/load_state_dict(); give a "
                        f"torch.optim.Optimizer, got {type(obj).__name__}"
                    )
                self.log.warning(f"set_model: entry {key!r} ({type(obj).__name__}) has no "
                                 "state_dict()/load_state_dict(); it is not checkpointed")
                continue
            entries.append(Entry(key, obj, kind))
        for entry in entries:  # fail now, not at the first save or at restart
            check_loadable(entry_state(entry), entry.key)
        self.model = dict(model)
        self.entries = entries
        self.sharded = dcp.is_sharded(unwrap_module(model["model"]))
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
    def capture(self, live: bool, progress: Progress = UNKNOWN_PROGRESS) -> TorchSnapshot:
        """The state of every entry: host copies, or (``live``) the CPU tensors as they are.

        A copy reuses the previous capture's tensors where shape, dtype and strides still
        match. A live capture copies only containers, and tensors that are views into a
        larger storage or not on the CPU (torch.save would write a view's whole storage);
        it never becomes a capture buffer, which must never alias live state.
        ``progress`` is written as the original CANDLE keys ``epoch`` and ``loss``.
        """
        objects = self.require_model("ckpt_epoch")
        sharded = None
        if self.sharded:
            sharded = dcp.capture(unwrap_module(objects["model"]), objects["optimizer"],
                                  copy_=not live)
        order = self.order.capture(progress.epoch) if progress.batch else None
        epoch_order = {} if order is None else {"epoch_order": order_to_file(order)}
        if not self.coord.is_writer:
            rng_only = global_rng.to_torch_file(global_rng.capture(torch), torch)
            # The replicated state is rank 0's to write.
            return TorchSnapshot({"rng": rng_only, **epoch_order}, [], sorted(rng_only),
                                 progress, sharded)
        local = [e for e in self.entries if not (self.sharded and e.key in REQUIRED)]
        copies = Copies(share=live)
        previous = self.buffers.previous(live)
        states = {e.key: copies.copy(entry_state(e), e.key, previous.get(e.key))
                  for e in local}
        # A live capture keeps what had to be copied (GPU tensors, views), never the live
        # tensors it shares.
        self.buffers.keep(live, {k: copies.owned(v) for k, v in states.items()}
                          if live else states)
        copies.wait()  # device-to-host copies are asynchronous; the bytes must be there
        rng = global_rng.to_torch_file(global_rng.capture(torch), torch)
        payload: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": progress.epoch,
            "model_state_dict": states.pop("model", None),  # None: sharded, DCP files
            "optimizer_state_dict": states.pop("optimizer", None),
            "optimizer_type": type_name(type(objects["optimizer"])),
            "loss": progress.metric,
            "entries": states,
            "rng": rng,
            **epoch_order,  # a mid-epoch save of a loop that iterates batches()
        }
        if sharded is not None:
            payload["sharded"] = "dcp"
        return TorchSnapshot(payload, [e.key for e in self.entries], sorted(rng), progress,
                             sharded)

    def write(self, snapshot: TorchSnapshot, sink: FileSink) -> Written:
        coord = self.coord
        if snapshot.sharded is not None:
            assert isinstance(coord, TorchCoordinator)  # set_model refuses it without one
            # First: DCP's save is a collective; no rank may fail before it alone.
            for shard in dcp.save(snapshot.sharded, sink.directory, coord.group,
                                  coord.is_writer):
                sink.adopt(shard)  # fsynced (again) and checksummed by finish()
        if coord.multi_process:
            name = write_rank_rng(sink, coord, snapshot.payload["rng"],
                                  snapshot.payload.get("epoch_order"))
            if not coord.is_writer:
                return Written(name, {})
        found: list[Any] = []
        if sink.objects is not None:  # ckpt_dedup: large tensors as shared objects
            skeleton, found = tensor_objects.split(snapshot.payload)
        if found:
            names = sink.put_objects([tensor_objects.as_array(t) for _, t in found])
            skeleton[tensor_objects.REFS] = [[list(path), name]
                                             for (path, _), name in zip(found, names,
                                                                        strict=True)]
            skeleton["format_version"] = FORMAT_VERSION_OBJECTS
            save(skeleton, sink, MODEL_FILE)
        else:
            save(snapshot.payload, sink, MODEL_FILE)
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
        self.buffers.release()

    def prefill_buffers(self) -> None:
        """Allocate (and fault in) the capture buffers now, so that the first background
        save's capture is a plain copy like every later one, not an allocation too."""
        self.require_model("set_model")
        if not self.coord.is_writer:
            return  # its captures hold only its RNG states
        copies = Copies()
        previous = self.buffers.previous(live=False)
        self.buffers.keep(False, {
            e.key: copies.copy(entry_state(e), e.key, previous.get(e.key))
            for e in self.entries if not (self.sharded and e.key in REQUIRED)})
        copies.wait()

    # ----------------------------------------------------------------- restoring
    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        """Read the model file and check all of it against the live objects; change nothing.

        Raises:
            CkptParamError: no ``set_model`` yet.
            CheckpointMismatchError: the checkpoint does not fit the model or optimizer.
            CheckpointCorruptError: ``model_file`` names no file of the checkpoint.
            ValueError, pickle.UnpicklingError, RuntimeError: the file is damaged or holds
                anything but tensors and plain data.
        """
        objects = self.require_model("restart")
        name = member_name(info, "model_file", LEGACY_MODEL_FILE)
        sharded_info = info.get("sharded") == "dcp"
        if sharded_info != self.sharded:
            raise CheckpointMismatchError(
                f"{directory}: " + ("the checkpoint holds sharded (DCP) state, the model is "
                                    "not sharded" if sharded_info else "the model is sharded "
                                    "(DTensor), the checkpoint holds replicated state"))
        sharded = None
        saved_world = info.get("world_size", 1)
        resharded = self.sharded and saved_world != self.coord.world_size
        if self.sharded:
            assert isinstance(self.coord, TorchCoordinator)
            # First: DCP's load is a collective (and reshards to this world size).
            sharded = dcp.plan_load(directory, unwrap_module(objects["model"]),
                                    objects["optimizer"], self.coord.group)
        # Before the big file; resharded, the per-rank RNG states do not map onto the ranks.
        ranks = None if resharded else load_rank_rng(directory, info, self.coord)
        # Mapped, not read: only names, shapes and dtypes are checked now; apply copies.
        mapped = stream.load_mapped(directory / name, load_regular)
        if isinstance(mapped.payload, dict) and tensor_objects.REFS in mapped.payload:
            # ckpt_dedup: each shared object mapped into its place (checked first)
            payload, extents = tensor_objects.resolve(directory, info, mapped.payload)
            mapped = stream.MappedCheckpoint(payload, mapped.extent, extents)
        elif tensor_objects.has_placeholders(mapped.payload):
            raise ValueError(f"{name} holds tensors without data and names no objects")
        plan = plan_restore(mapped.payload, name, objects, self.entries, sharded=self.sharded)
        ranks_rng = None if ranks is None else ranks[0]
        order = self._order_of(info, name, mapped.payload, ranks)
        plan.sharded = sharded
        plan.mapped = mapped
        if resharded:
            plan.notes.append(
                f"{directory} was saved by {saved_world} rank(s), this run has "
                f"{self.coord.world_size}: the sharded state was resharded, the per-rank RNG "
                "states are not restored (the run is not bit-identical to an uninterrupted "
                "one)")
            plan.rng = None
        elif ranks_rng is not None:
            plan.rng = ranks_rng
        notes = list(plan.notes)
        if plan.original_candle:
            what = "weights and optimizer state" if plan.optimizer is not None else "weights"
            notes.append(f"{name} was written by the original CANDLE code: {what} restored; it "
                         "holds no RNG states, so the resumed run is not bit-identical to an "
                         "uninterrupted one")
        return Restored(apply=lambda: self._apply(plan, order), notes=notes)

    def _order_of(self, info: dict[str, Any], name: str, payload: Any,
                  ranks: tuple[Any, Any] | None) -> tuple[OrderRecord | None, int, int]:
        """The checkpoint's epoch order, checked (a rank's own under torch.distributed),
        with the epochs and batches it holds.

        Raises:
            CheckpointCorruptError: the record is damaged or contradicts the checkpoint.
        """
        epoch, batch = info.get("epoch"), info.get("batch", 0)
        if not isinstance(epoch, int) or not isinstance(batch, int) or not batch:
            return None, 0, 0  # an epoch's end (record.py checked the numbers)
        if ranks is not None:
            raw, where = ranks[1], rank_file("rng", self.coord.rank)
        else:
            raw, where = payload.get("epoch_order") if isinstance(payload, dict) else None, name
        return order_from_file(raw, where, epoch, batch), epoch, batch

    def _apply(self, plan: RestorePlan,
               order: tuple[OrderRecord | None, int, int] = (None, 0, 0)) -> list[str]:
        """Copy a checked plan into the live objects; problems worth a warning."""
        objects = self.require_model("restart")
        mapped = plan.mapped or stream.MappedCheckpoint(None, None)
        if plan.sharded is not None:
            dcp.apply(unwrap_module(objects["model"]), objects["optimizer"], plan.sharded)
        else:
            mapped.apply_module(unwrap_module(objects["model"]), plan.model)
            if plan.optimizer is not None:
                mapped.apply_optimizer(objects["optimizer"], plan.optimizer)
        by_key = {e.key: e for e in self.entries}
        for key, state in plan.entries.items():
            entry = by_key[key]
            if entry.kind == "state_dict" and state == {} and entry.obj.state_dict() == {}:
                continue  # e.g. a disabled GradScaler, which refuses an empty state
            mapped.apply_state(entry.obj, state, partial(load_entry, entry))
        # Nothing live may keep the file mapped (the keep policy deletes the file later).
        plan.model, plan.optimizer, plan.entries = {}, None, {}
        mapped.release()
        self.order.resume(*order)  # the next batches() of that epoch resumes it
        if plan.rng is None:
            return []
        _, problems = global_rng.restore(plan.rng, torch)
        return problems
