"""Exact mid-epoch resume of a data loader: what :meth:`CandleCkptPyTorch.batches` does.

A loop that iterates ``ckpt.batches(loader, epoch)`` instead of ``loader`` lets the
engine record, as each epoch's iterator is created, what the epoch's order is drawn
from (its *epoch order*), and count the batches the loader yields. A mid-epoch
checkpoint holds that record (``epoch_order`` in ``model.pt``, and in each rank's
``rng-rank-NNNNN.pt`` under ``torch.distributed``). After a restart from it, the
interrupted epoch's iterator is created again from the recorded state, so its order is
the one the uninterrupted run used, and the batches already trained are skipped:

* a ``DataLoader`` over a map-style dataset (``RandomSampler``, ``SequentialSampler``,
  ``DistributedSampler``, samplers of the user's): the RNG states the iterator draws
  from when it is created (torch's, numpy's and Python's global generators, the
  loader's and the sampler's own ``torch.Generator``) are set to their values at the
  epoch's start, the iterator is created, and the done batches are taken from the
  *index* sampler, so their samples are never fetched (with ``num_workers > 0`` too:
  the workers receive only the indices of the batches still to train). Then every
  generator is put back as it was: a resumed epoch draws nothing that the
  uninterrupted one did not (Dropout goes on from the restored state).
* torchdata's ``StatefulDataLoader``: its ``state_dict()`` is recorded and loaded back;
  it resumes by itself.
* a ``DataLoader`` over an ``IterableDataset``: there are no indices to skip; the done
  batches are read again and dropped, from the epoch's recorded RNG states.

The loader's index sampler is replaced while the resumed epoch's iterator is created
(``DataLoader`` refuses to set it after construction; the previous one is put back
before :meth:`EpochOrders.batches` returns). A persistent workers' iterator keeps the
stand-in, which passes every later epoch's iteration through unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.distributed import DistributedSampler

from ...errors import CheckpointCorruptError, CheckpointMismatchError, CkptParamTypeError
from ...logs import CkptLog
from ...params import epoch_arg
from .. import rng as global_rng
from .copies import check_loadable
from .matching import type_name

__all__ = ["EpochBatches", "EpochOrders", "OrderRecord", "order_from_file", "order_to_file"]

KINDS = ("sampler", "iterable", "stateful")
_KIND_TEXT = {"sampler": "a DataLoader over a map-style dataset",
              "iterable": "a DataLoader over an IterableDataset",
              "stateful": "a torchdata StatefulDataLoader"}


@dataclass(frozen=True)
class OrderRecord:
    """What an epoch's order was drawn from, and how far the loader got in it."""

    kind: str  # one of KINDS
    epoch: int  # the 0-based epoch
    position: int  # batches the loader had yielded in it (0: none yet)
    length: int | None  # batches per epoch, where the loader knows
    sampler: str | None  # the loader's sampler and batch sampler types (None: none)
    batch_sampler: str | None
    start: global_rng.GlobalRng  # the global RNG states as the epoch's iterator was created
    generators: dict[str, bytes] = field(default_factory=dict)  # own generators then
    generators_now: dict[str, bytes] = field(default_factory=dict)  # ... at the capture
    fresh: bool = True  # False: a persistent workers' iterator was reset, not created
    distributed: tuple[int, int, int] | None = None  # DistributedSampler seed, rank, ranks
    sampler_epoch: int | None = None  # DistributedSampler.epoch the epoch was drawn with
    state: dict[str, Any] | None = None  # StatefulDataLoader.state_dict() at the capture


# ------------------------------------------------------------------------ the loader
def loader_kind(loader: Any) -> str:
    if not isinstance(loader, DataLoader):
        raise CkptParamTypeError(
            f"batches: loader must be a torch.utils.data.DataLoader (or torchdata's "
            f"StatefulDataLoader), got {type(loader).__name__}")
    if callable(getattr(loader, "state_dict", None)) \
            and callable(getattr(loader, "load_state_dict", None)):
        return "stateful"
    return "iterable" if isinstance(loader.dataset, IterableDataset) else "sampler"


def _own_generators(loader: DataLoader) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` objects the loader's iterator draws from besides the
    global one, by role (one name per object)."""
    found: dict[str, torch.Generator] = {}
    candidates = [("loader", loader.generator),
                  ("sampler", getattr(loader.sampler, "generator", None)),
                  ("batch_sampler", getattr(loader.batch_sampler, "generator", None)),
                  ("batch_sampler.sampler",
                   getattr(getattr(loader.batch_sampler, "sampler", None), "generator", None))]
    for name, gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found.values()):
            found[name] = gen
    return found


def _distributed(loader: DataLoader) -> DistributedSampler[Any] | None:
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(sampler, DistributedSampler):
            return sampler
    return None


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except (TypeError, NotImplementedError):  # a sampler or an IterableDataset without len
        return None


def _sampler_types(loader: DataLoader) -> tuple[str | None, str | None]:
    def name(obj: Any) -> str | None:
        return None if obj is None else type_name(type(obj))
    return name(loader.sampler), name(loader.batch_sampler)


def _reuses_iterator(loader: DataLoader) -> bool:
    """Would ``iter(loader)`` reset a persistent workers' iterator (no new base seed)?"""
    return bool(loader.persistent_workers and loader.num_workers > 0
                and getattr(loader, "_iterator", None) is not None)


def _global_now() -> global_rng.GlobalRng:
    # CUDA generators are left alone: no sampler draws from them.
    return replace(global_rng.capture(torch), cuda=None)


def _set_global(state: global_rng.GlobalRng) -> None:
    global_rng.restore(replace(state, cuda=None), torch)


# ------------------------------------------------------------------------ skipping
class _Skipping(Iterator[Any]):
    """An index sampler's iterator whose first ``skip`` items are taken and dropped the
    first time it is asked for one (or at :meth:`skip_now`)."""

    def __init__(self, inner: Iterator[Any], skip: int, done: Callable[[], None]) -> None:
        self._inner = inner
        self._left = skip
        self._done = done
        self.skipped = 0

    def skip_now(self) -> None:
        if not self._left:
            return
        try:
            while self._left:
                next(self._inner)
                self._left -= 1
                self.skipped += 1
        except StopIteration:
            self._left = 0  # fewer batches than skipped: the caller compares the counts
        finally:
            self._done()

    def __next__(self) -> Any:
        self.skip_now()
        return next(self._inner)


class _ResumeSampler:
    """Stands in for a loader's index sampler while a resumed epoch's iterator is made.

    ``mode`` says what an iteration gives: ``"empty"`` nothing (to create a persistent
    workers' iterator without drawing an epoch's order), ``"skip"`` the sampler's
    items after the first ``skip`` (every iterator made is armed, since a loader may
    make one and use the next; the first to skip ends the mode), ``"pass"`` the
    sampler's (a persistent workers' iterator keeps the stand-in for later epochs).
    """

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner = inner
        self.skip = skip
        self.mode = "pass"
        self.skipping: _Skipping | None = None  # the last armed iterator

    def __iter__(self) -> Iterator[Any]:
        if self.mode == "empty":
            return iter(())
        if self.mode == "skip":
            # iter() now, where the loader calls it: a sampler that draws in __iter__
            # itself draws at the same point of the sequence.
            self.skipping = _Skipping(iter(self.inner), self.skip, self._skipped)
            return self.skipping
        return iter(self.inner)

    def _skipped(self) -> None:
        self.mode = "pass"

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # batch_size, drop_last, sampler ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _iterate_skipping(loader: DataLoader, skip: int, set_states: Callable[[], None],
                      persistent_reset: bool) -> tuple[Any, int]:
    """``iter(loader)`` with its index sampler's first ``skip`` items dropped; the
    iterator and how many were (fewer only when the epoch is shorter).

    ``set_states()`` runs right before the epoch's iterator is created. With
    ``persistent_reset`` the interrupted epoch reset a persistent workers' iterator
    (which draws no new base seed): one is created first, drawing no order, and reset.
    """
    name = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    original = getattr(loader, name)
    stand_in = _ResumeSampler(original, skip)
    # DataLoader.__setattr__ refuses these names once constructed: the stand-in lives
    # only while the iterator is created (a persistent workers' iterator keeps it).
    object.__setattr__(loader, name, stand_in)
    try:
        if persistent_reset:
            stand_in.mode = "empty"
            iter(loader)  # the workers started; nothing was drawn for an epoch
        stand_in.mode = "skip"
        set_states()
        iterator = iter(loader)
    finally:
        object.__setattr__(loader, name, original)
    skipping = stand_in.skipping
    if skipping is None:
        return iterator, 0
    skipping.skip_now()  # one process: nothing was asked for yet
    return iterator, skipping.skipped


# ------------------------------------------------------------------------ one epoch
class EpochBatches(Iterator[Any]):
    """The batches of one epoch of a loader, as :meth:`CandleCkptPyTorch.batches` gives.

    ``start`` is the index of the first batch it yields (the batches skipped after a
    restart mid-epoch, else 0), so ``enumerate(batches, start=batches.start)`` numbers
    the batches as an uninterrupted epoch does. ``len()`` is the batches left.
    """

    def __init__(self, iterator: Iterator[Any], record: OrderRecord, start: int,
                 loader: DataLoader) -> None:
        self._iterator = iterator
        self.record = record
        self.epoch = record.epoch
        self.start = start
        self.position = start  # batches of the epoch yielded so far, skipped ones included
        self.loader = loader

    def __next__(self) -> Any:
        batch = next(self._iterator)
        self.position += 1
        return batch

    def __len__(self) -> int:
        if self.record.length is None:
            raise TypeError("the loader's length is not known")
        return max(self.record.length - self.position, 0)


class EpochOrders:
    """The epoch order of the loader being iterated, and the one a restart resumes."""

    def __init__(self, log: CkptLog) -> None:
        self.log = log
        self.active: EpochBatches | None = None
        self.pending: OrderRecord | None = None  # a restart's, for its epoch's batches()
        self.pending_skip = 0  # a mid-epoch checkpoint without a record: batches to skip
        self.pending_epoch: int | None = None

    # --------------------------------------------------------------- restart
    def resume(self, record: OrderRecord | None, epoch: int, batch: int) -> None:
        """A restart applied a checkpoint of ``epoch`` epochs + ``batch`` batches."""
        self.active = None
        self.pending = record if batch else None
        self.pending_skip = batch if record is None else 0
        self.pending_epoch = epoch if batch else None

    # --------------------------------------------------------------- capture
    def capture(self, epoch: int | None) -> OrderRecord | None:
        """The record of the loader being iterated in ``epoch`` (0-based), if one is."""
        active = self.active
        if active is None or epoch is None or active.epoch != epoch:
            return None
        record = replace(active.record, position=active.position)
        if record.kind == "stateful":
            return replace(record, state=active.loader.state_dict())  # type: ignore[attr-defined]
        now = {name: gen.get_state() for name, gen in _own_generators(active.loader).items()}
        return replace(record, generators_now={k: bytes(v.tolist()) for k, v in now.items()})

    # --------------------------------------------------------------- an epoch
    def batches(self, loader: Any, epoch: Any) -> EpochBatches:
        """``CandleCkptPyTorch.batches``: the epoch's iterator, its order recorded; in the
        epoch a restart left mid-way, resumed after the batches done."""
        kind = loader_kind(loader)
        epoch = epoch_arg(epoch)
        pending_epoch = self.pending_epoch
        if pending_epoch is not None and epoch > pending_epoch:
            self.log.warning(
                f"batches: epoch {epoch + 1} begins, but the restart was {self._pending_text()}"
                f" into epoch {pending_epoch + 1}; the rest of that epoch is not trained")
            self.resume(None, 0, 0)
        if pending_epoch == epoch:
            record, skip = self.pending, self.pending_skip
            if record is not None:
                batches = self._resumed(loader, kind, epoch, record)
            else:
                batches = self._skipped_only(loader, kind, epoch, skip)
            self.resume(None, 0, 0)  # resumed; a loader refused above may be retried
        else:
            batches = self._fresh(loader, kind, epoch)
        self.active = batches
        return batches

    def _pending_text(self) -> str:
        count = self.pending.position if self.pending is not None else self.pending_skip
        return f"{count} batches"

    def _record(self, loader: DataLoader, kind: str, epoch: int) -> OrderRecord:
        sampler, batch_sampler = _sampler_types(loader)
        dist_sampler = _distributed(loader)
        own = {} if kind == "stateful" else _own_generators(loader)
        states = {k: bytes(g.get_state().tolist()) for k, g in own.items()}
        return OrderRecord(
            kind=kind, epoch=epoch, position=0, length=_length(loader), sampler=sampler,
            batch_sampler=batch_sampler, start=_global_now(), generators=states,
            fresh=not _reuses_iterator(loader),
            distributed=None if dist_sampler is None else (
                int(dist_sampler.seed), int(dist_sampler.rank),
                int(dist_sampler.num_replicas)),
            sampler_epoch=None if dist_sampler is None else int(dist_sampler.epoch))

    def _fresh(self, loader: DataLoader, kind: str, epoch: int) -> EpochBatches:
        record = self._record(loader, kind, epoch)
        if kind == "stateful" and self.active is None:
            # Once: a state that could not be read back with weights_only is refused now,
            # not at the first mid-epoch save (which a stop signal may be waiting for).
            check_loadable(loader.state_dict(),  # type: ignore[attr-defined]
                           "batches: the StatefulDataLoader's state")
        return EpochBatches(iter(loader), record, 0, loader)

    def _skipped_only(self, loader: DataLoader, kind: str, epoch: int,
                      skip: int) -> EpochBatches:
        """A mid-epoch checkpoint that records no epoch order: skip, and say so."""
        record = self._record(loader, kind, epoch)
        if kind == "stateful":
            # Its position is its own state's, restored if set_model named it: not skipped
            # again. Creating the iterator draws nothing from the restored global RNGs.
            pre = _global_now()
            try:
                iterator = iter(loader)
            finally:
                _set_global(pre)
            self.log.info(f"batches: epoch {epoch + 1} resumed from the StatefulDataLoader's "
                          "own state (restored if set_model names the loader)")
            return EpochBatches(iterator, record, skip, loader)
        self.log.warning(
            f"batches: the checkpoint holds no record of epoch {epoch + 1}'s order (it was "
            f"not trained through batches()); its first {skip} batches are skipped, but the "
            "rest of the epoch is in the order drawn now, which is the interrupted run's "
            "only for a sequential sampler")
        pre = _global_now()
        try:
            iterator, skipped = self._skip(loader, kind, skip, lambda: None, False)
        finally:
            _set_global(pre)  # skipping draws nothing: Dropout goes on as restored
        if skipped != skip:
            raise CheckpointMismatchError(
                f"batches: epoch {epoch + 1} of this loader has {skipped} batches; the "
                f"checkpoint was taken after batch {skip} of it. Was the dataset or the "
                "batch size changed?")
        return EpochBatches(iterator, record, skipped, loader)

    def _skip(self, loader: DataLoader, kind: str, skip: int, set_states: Callable[[], None],
              persistent_reset: bool) -> tuple[Any, int]:
        if kind == "iterable":  # no indices to skip: read the batches and drop them
            set_states()
            iterator = iter(loader)
            skipped = sum(1 for _ in itertools.islice(iterator, skip))
            return iterator, skipped
        return _iterate_skipping(loader, skip, set_states, persistent_reset)

    def _resumed(self, loader: DataLoader, kind: str, epoch: int,
                 record: OrderRecord) -> EpochBatches:
        self._check_fits(loader, kind, record)
        # A StatefulDataLoader's state_dict holds its generators' states: left to it.
        own = {} if kind == "stateful" else _own_generators(loader)
        pre_global = _global_now()
        pre_own = {k: g.get_state() for k, g in own.items()}
        dist_sampler = _distributed(loader)
        pre_sampler_epoch = None if dist_sampler is None else dist_sampler.epoch

        def epoch_start() -> None:
            _set_global(record.start)
            for name, gen in own.items():
                gen.set_state(_byte_tensor(record.generators[name]))

        try:
            if kind == "stateful":
                assert record.state is not None  # checked when read
                loader.load_state_dict(record.state)  # type: ignore[attr-defined]
                iterator, skipped = iter(loader), record.position
            else:
                if _reuses_iterator(loader):
                    # Iterated before in this process: its stored index sampler would
                    # not see the stand-in. A new one is made (the old one's workers end).
                    loader._iterator = None
                if dist_sampler is not None and record.sampler_epoch is not None:
                    dist_sampler.set_epoch(record.sampler_epoch)
                persistent_reset = not record.fresh and loader.persistent_workers
                iterator, skipped = self._skip(loader, kind, record.position, epoch_start,
                                               persistent_reset)
        finally:
            _set_global(pre_global)  # what restart restored: the state after batch k
            for name, gen in own.items():
                saved = record.generators_now.get(name)
                gen.set_state(_byte_tensor(saved) if saved is not None else pre_own[name])
            if dist_sampler is not None and pre_sampler_epoch is not None:
                dist_sampler.set_epoch(pre_sampler_epoch)
        if skipped != record.position:
            raise CheckpointMismatchError(
                f"batches: epoch {epoch + 1} of this loader has {skipped} batches; the "
                f"checkpoint was taken after batch {record.position} of it. Was the dataset "
                "or the batch size changed?")
        self.log.info(f"batches: epoch {epoch + 1} resumed after batch {skipped} "
                      f"({_KIND_TEXT[kind]}), in the order of the interrupted run")
        # A second stop in this epoch records the same epoch start.
        resumed = replace(self._record(loader, kind, epoch), start=record.start,
                          generators=record.generators, fresh=record.fresh,
                          sampler_epoch=record.sampler_epoch)
        return EpochBatches(iterator, resumed, skipped, loader)

    def _check_fits(self, loader: DataLoader, kind: str, record: OrderRecord) -> None:
        """Raise CheckpointMismatchError unless ``loader`` can resume ``record``'s epoch."""
        if kind != record.kind:
            raise CheckpointMismatchError(
                f"batches: the checkpoint's epoch order was recorded from "
                f"{_KIND_TEXT[record.kind]}; this loader is {_KIND_TEXT[kind]}. Pass the "
                "loader the interrupted run trained on")
        if kind == "stateful":
            return
        sampler, batch_sampler = _sampler_types(loader)
        if (sampler, batch_sampler) != (record.sampler, record.batch_sampler):
            raise CheckpointMismatchError(
                f"batches: the checkpoint's epoch was drawn by sampler {record.sampler} and "
                f"batch sampler {record.batch_sampler}; this loader has {sampler} and "
                f"{batch_sampler}")
        length = _length(loader)
        if record.length is not None and length != record.length:
            raise CheckpointMismatchError(
                f"batches: the checkpoint's loader had {record.length} batches per epoch, "
                f"this one has {length}; the interrupted epoch's order cannot be resumed")
        own = _own_generators(loader)
        if set(own) != set(record.generators):
            raise CheckpointMismatchError(
                f"batches: the checkpoint's loader drew from generators "
                f"{sorted(record.generators) or 'none'} of its own, this one from "
                f"{sorted(own) or 'none'}")
        for name, gen in own.items():
            if gen.get_state().numel() != len(record.generators[name]):
                raise CheckpointMismatchError(
                    f"batches: the checkpoint's {name} generator state does not fit this "
                    f"loader's {name} generator (device {gen.device})")
        dist_sampler = _distributed(loader)
        live = None if dist_sampler is None else (
            int(dist_sampler.seed), int(dist_sampler.rank), int(dist_sampler.num_replicas))
        if live != record.distributed:
            raise CheckpointMismatchError(
                "batches: the checkpoint's DistributedSampler had (seed, rank, num_replicas) "
                f"{record.distributed}, this loader's has {live}")


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ------------------------------------------------------------------------ the file
def order_to_file(record: OrderRecord) -> dict[str, Any]:
    """The ``epoch_order`` entry of a torch checkpoint file (read with weights_only)."""
    out: dict[str, Any] = {
        "kind": record.kind, "epoch": record.epoch, "position": record.position,
        "length": record.length, "sampler": record.sampler,
        "batch_sampler": record.batch_sampler,
        "start": global_rng.to_torch_file(record.start, torch),
        "generators": {k: _byte_tensor(v) for k, v in record.generators.items()},
        "generators_now": {k: _byte_tensor(v) for k, v in record.generators_now.items()},
        "fresh": record.fresh,
        "distributed": None if record.distributed is None else list(record.distributed),
        "sampler_epoch": record.sampler_epoch,
    }
    if record.state is not None:
        out["state"] = record.state
    return out


def order_from_file(raw: Any, name: str, epoch: int, batch: int) -> OrderRecord | None:
    """The checked ``epoch_order`` of a checkpoint file of ``epoch`` epochs + ``batch``
    batches (None: it has none).

    Raises:
        CheckpointCorruptError: the record is damaged or contradicts the checkpoint.
    """
    if raw is None:
        return None
    where = f"{name}: epoch_order"
    if not isinstance(raw, dict):
        raise CheckpointCorruptError(f"{where} is a {type(raw).__name__}, expected a dict")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise CheckpointCorruptError(f"{where}: kind {kind!r} is not one of {list(KINDS)}")

    def integer(key: str, optional: bool = False) -> Any:
        value = raw.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointCorruptError(f"{where}: {key} {value!r} is not a non-negative "
                                         "integer")
        return value

    def text(key: str) -> str | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise CheckpointCorruptError(f"{where}: {key} {value!r} is not a type name")
        return value

    def states(key: str) -> dict[str, bytes]:
        value = raw.get(key)
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) and v.dtype == torch.uint8
                and v.dim() == 1 for k, v in value.items()):
            raise CheckpointCorruptError(f"{where}: {key} is not a dict of torch.Generator "
                                         "states")
        return {k: bytes(v.tolist()) for k, v in value.items()}

    record_epoch, position = integer("epoch"), integer("position")
    if record_epoch != epoch or position < 1:
        raise CheckpointCorruptError(
            f"{where}: epoch {record_epoch + 1} after batch {position} contradicts the "
            f"checkpoint (epoch {epoch + 1}, {batch} batches done)")
    distributed = raw.get("distributed")
    if distributed is not None and not (
            isinstance(distributed, list) and len(distributed) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in distributed)):
        raise CheckpointCorruptError(f"{where}: distributed {distributed!r} is not "
                                     "[seed, rank, num_replicas]")
    fresh = raw.get("fresh")
    if not isinstance(fresh, bool):
        raise CheckpointCorruptError(f"{where}: fresh {fresh!r} is not a bool")
    state = raw.get("state")
    if kind == "stateful" and not isinstance(state, dict):
        raise CheckpointCorruptError(f"{where}: a StatefulDataLoader record without its "
                                     "state_dict")
    start = global_rng.from_torch_file(raw.get("start"), f"{where}['start']", torch)
    return OrderRecord(
        kind=kind, epoch=record_epoch, position=position,
        length=integer("length", optional=True), sampler=text("sampler"),
        batch_sampler=text("batch_sampler"), start=start,
        generators=states("generators"), generators_now=states("generators_now"),
        fresh=fresh, distributed=None if distributed is None else (
            distributed[0], distributed[1], distributed[2]),
        sampler_epoch=integer("sampler_epoch", optional=True),
        state=state if kind == "stateful" else None)
