"""Multi-process training (torch.distributed): one checkpoint for all ranks, one restart.

Every rank runs the same CANDLE calls; this module makes them act as one:

- :class:`Coordinator` is the only place that talks to ``torch.distributed``: rank,
  world size, ``broadcast`` from rank 0 and ``all_gather`` of small picklable outcomes.
  It uses a gloo group of its own, so that a background (``ckpt_async``) save's
  collectives never interleave with the training loop's on the default group (DDP's
  all-reduces, possibly on NCCL).
- :func:`decide_together`: the save decision is made once, by rank 0, on the metric
  reduced across ranks (``ckpt_distributed_metric``: "mean" or "rank0"), and broadcast.
- :class:`DistributedSaver`: rank 0 holds the writer lock and creates ``work/``; every
  rank writes its own files into it (rank 0 the shared model file, each rank its RNG
  file); rank 0 commits only after an ``all_gather`` says every rank's files are written
  and fsynced. A failure anywhere makes every rank raise the same
  :class:`CheckpointWriteError`, with ``last`` untouched.
- :func:`restart_together`: rank 0 resolves ``last`` and validates; every rank checks its
  share of the chosen checkpoint (validate-then-apply across ranks); the ranks apply it
  only when all can, fall back together, or all raise the same error.

A rank killed at any moment leaves at most an uncommitted ``work/`` (the commit point is
still rank 0's ``os.replace`` of ``last``), which the next run's rank 0 removes.

``import candle_ckpt.distributed`` does not import torch; the coordinator imports
``torch.distributed`` when it is built from an initialized process group.
"""

from __future__ import annotations

import errno as _errno
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import Backend
from .commit import FileSink
from .errors import CheckpointMismatchError, CheckpointWriteError, CkptError, CkptParamError
from .integrity import ChecksumTally
from .layout import INFO_FILE, CkptKey
from .params import DISTRIBUTED_METRICS
from .record import SaveRecord, to_info
from .restorer import BestSoFar, RestartResult, Restorer, restart_result, where_in
from .saver import Saver


def rank_file(kind: str, rank: int) -> str:
    """The name of a rank's own file in a checkpoint, e.g. ``rng-rank-00001.pt``."""
    return f"{kind}-rank-{rank:05d}.pt"


class Coordinator:
    """Rank, world size and the object collectives of one checkpointing job."""

    def __init__(self, rank: int, world_size: int, group: Any = None,
                 batch_group: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group
        # ckpt_batch's agreement runs on the training thread while a background save may
        # be using ``group`` on the writer thread: two threads must not share one group.
        self.batch_group = batch_group

    @property
    def is_writer(self) -> bool:
        """Rank 0 holds the lock, writes the shared files and commits."""
        return self.rank == 0

    @classmethod
    def from_torch(cls) -> Coordinator | None:
        """The coordinator of the initialized default process group, or None.

        Must be called on every rank at the same point (it creates a process group).
        """
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch without distributed support
            return None
        if not dist.is_available() or not dist.is_initialized():
            return None
        # A gloo group of our own: object collectives need a CPU backend, and a save on
        # the writer thread must not race the training loop's collectives on the default
        # group (the order of collectives on one group must be the same on every rank).
        group = dist.new_group(backend="gloo")
        batch_group = dist.new_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), group, batch_group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.is_writer else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, obj: Any, batch: bool = False) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``batch``: ckpt_batch's)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.batch_group if batch else self.group)
        return out


def reduce_metric(values: list[float | None], how: str) -> float | None:
    """The metric every rank's save decision uses: the ranks' mean, or rank 0's.

    A rank passing None (no metric) makes the mean None: a best cannot be judged on a
    part of the ranks.
    """
    if how == "rank0":
        return values[0]
    if how != "mean":
        raise CkptParamError(f"parameter 'ckpt_distributed_metric': value {how!r} is not "
                             f"allowed; accepted: {', '.join(DISTRIBUTED_METRICS)}")
    if any(v is None for v in values):
        return None
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers)


def decide_together(coord: Coordinator, decide: Callable[[float | None], SaveRecord | None],
                    metric: float | None, how: str) -> SaveRecord | None:
    """Rank 0 decides on the reduced metric; every rank gets the same record (or None)."""
    reduced = reduce_metric(coord.all_gather(metric), how)
    record = decide(reduced) if coord.is_writer else None
    result: SaveRecord | None = coord.broadcast(record)
    return result


def agree_on_stop(coord: Coordinator, due: Any, interval_due: bool) -> tuple[Any, bool]:
    """Mid-epoch saves (``ckpt_batch``) together: a stop due on any rank (a signal reaches
    one rank first, clocks differ) is a stop on all; the lowest such rank's reason."""
    outcomes = coord.all_gather((due, interval_due), batch=True)
    first = next((d for d, _ in outcomes if d is not None), None)
    return first, any(i for _, i in outcomes)


@dataclass(frozen=True)
class CaptureFailed:
    """A rank's capture raised: its snapshot, so that the save fails on every rank."""

    error: Exception


@dataclass(frozen=True)
class _Failure:
    """Why a step failed on some rank: the same text and errno reach every rank."""

    errno: int
    message: str


def _failure(rank: int, what: str, err: BaseException) -> _Failure:
    code = getattr(err, "errno", None)
    text = getattr(err, "strerror", None) if isinstance(err, OSError) and \
        not isinstance(err, CkptError) else None
    return _Failure(code if isinstance(code, int) else 0,
                    f"rank {rank}: {what}: {type(err).__name__}: {text or err}")


class DistributedSaver(Saver):
    """A :class:`Saver` whose save is one collective step of every rank."""

    def __init__(self, coord: Coordinator, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coord = coord

    def save(self, record: SaveRecord, snapshot: Any) -> Path:
        """Every rank writes its files into work/; rank 0 commits once all succeeded.

        Raises:
            CheckpointWriteError: on every rank, the same, when any rank failed;
                ``last`` and every earlier checkpoint are untouched.
        """
        try:
            return self._save(record, snapshot)
        except CkptError:
            raise
        except Exception as err:  # a collective failed: another rank died or hangs
            if self.coord.is_writer:
                shutil.rmtree(self.layout.work, ignore_errors=True)
            message = (f"saving epoch {record.epoch}: rank {self.coord.rank} lost contact with "
                       f"the other ranks ({type(err).__name__}: {err}); the checkpoint is not "
                       "committed: earlier checkpoints and 'last' are untouched")
            self._warn(message)
            raise CheckpointWriteError(0, message) from err

    def _save(self, record: SaveRecord, snapshot: Any) -> Path:
        coord, epoch, work = self.coord, record.epoch, self.layout.work
        start = time.perf_counter()
        failure: _Failure | None = None
        if isinstance(snapshot, CaptureFailed):
            failure = _failure(coord.rank, "capturing its state", snapshot.error)
        elif coord.is_writer:
            try:
                self.finish_deletions()  # the space of the last save's deletions first
                self.committer.new_work()
            except Exception as err:
                failure = _failure(0, f"creating {work}", err)
        failures = coord.all_gather(failure)
        if coord.is_writer and any(failures) and failure is None:
            shutil.rmtree(work, ignore_errors=True)  # created, but another rank failed
        self._raise(next((f for f in failures if f is not None), None), epoch)

        # Every rank writes its own files; a failure is reported, not raised, so that
        # every rank reaches the gather below.
        outcome: dict[str, Any] | _Failure
        try:
            tally = ChecksumTally()
            sink = FileSink(work, record.checksum_algorithm, tally)
            begun = time.perf_counter()
            written = self.backend.write(snapshot, sink)
            outcome = {"written": written, "files": sink.finish(), "tally": tally,
                       "seconds": time.perf_counter() - begun}
        except Exception as err:
            outcome = _failure(coord.rank, f"writing its files into {work}", err)
        outcomes = coord.all_gather(outcome)

        failure = next((o for o in outcomes if isinstance(o, _Failure)), None)
        directory = self.layout.epoch_dir(epoch, record.batch)
        if coord.is_writer:
            if failure is None:
                try:
                    self._commit(record, outcomes)
                except Exception as err:
                    failure = _failure(0, "committing", err)
            if failure is not None:
                shutil.rmtree(work, ignore_errors=True)
        self._raise(coord.broadcast(failure), epoch)
        if coord.is_writer:
            self._committed(record, directory, time.perf_counter() - start)
        else:
            self.time_saving += time.perf_counter() - start
        return directory

    def _commit(self, record: SaveRecord, outcomes: list[dict[str, Any]]) -> None:
        """Rank 0: the manifest of every rank's files, ckpt-info.json, rename, links."""
        files: dict[str, Any] = {}
        for rank, outcome in enumerate(outcomes):
            clash = set(files) & set(outcome["files"])
            if clash:
                raise CheckpointWriteError(
                    _errno.EEXIST, f"rank {rank} wrote {sorted(clash)}, which another rank "
                    "wrote too; each rank must write files of its own")
            files.update(outcome["files"])
        written = outcomes[0]["written"]
        if written.model_file not in files:
            raise CheckpointWriteError(
                0, f"backend reported model file {written.model_file!r} that it did not write")
        # The ranks wrote side by side: all their bytes, in the time of the slowest.
        self.report_written(files, max(o["seconds"] for o in outcomes),
                            ChecksumTally.parallel(o["tally"] for o in outcomes))
        info = to_info(record, written, dict(sorted(files.items())))
        self.committer.write_info(self.layout.work / INFO_FILE, info)
        self.committer.publish(record.epoch, self.layout.work, record.batch)
        if not record.batch:  # a mid-epoch checkpoint is never the best
            self._point_best(record)
        self.committer.point("last", record.epoch, record.batch)  # the commit point

    def _raise(self, failure: _Failure | None, epoch: int) -> None:
        if failure is not None:
            message = (f"saving epoch {epoch} failed on {failure.message}; no rank committed "
                       "it: earlier checkpoints and 'last' are untouched")
            if self.coord.is_writer:
                self._warn(message)
            raise CheckpointWriteError(failure.errno, message)


# ---------------------------------------------------------------------------- restart
@dataclass(frozen=True)
class _Candidate:
    """Rank 0's verdict on one checkpoint: skip it (why), or try it (where, its info)."""

    key: CkptKey
    directory: str
    info: dict[str, Any] | None
    best: BestSoFar | None
    skip: str | None


def restart_together(coord: Coordinator, restorer: Restorer, backend: Backend,
                     verbose: bool = True) -> RestartResult | None:
    """One restart for all ranks: the same epoch everywhere, or the same error everywhere.

    Rank 0 resolves ``last`` and validates files, sizes and checksums (every rank's
    files are in the manifest); then every rank checks its share against its live
    objects; only when all can is it applied, on every rank. A damaged share on any
    rank skips the checkpoint on all of them (falling back to an older one).

    Raises:
        CheckpointNotFoundError, CheckpointCorruptError, CheckpointMismatchError: as a
            single-process restart, on every rank alike.
    """
    plan: Any = None
    if coord.is_writer:
        try:
            where = restorer.locate()
            plan = (where, restorer.candidates(where))
        except CkptError as err:
            plan = err
    plan = coord.broadcast(plan)
    if isinstance(plan, BaseException):
        raise plan
    where, candidates = plan
    skipped: list[dict[str, Any]] = []
    for key in candidates:
        candidate = None
        if coord.is_writer:
            candidate = _judge(restorer, where.layout, key)
        candidate = coord.broadcast(candidate)
        if candidate.skip is not None:
            skipped.append({"epoch": key.epoch, "batch": key.batch, "path": candidate.directory,
                            "reason": candidate.skip})
            restorer.log.warning(f"skipping {candidate.directory}: {candidate.skip}")
            continue
        directory = Path(candidate.directory)
        restored = None
        outcome: Any
        try:
            restored = backend.load(directory, candidate.info)
            outcome = None
        except (CheckpointMismatchError, CkptParamError) as err:
            outcome = ("stop", err)  # incompatible or misused: every rank stops
        except Exception as err:  # a framework refusing the file is damage to us
            outcome = ("damaged", f"rank {coord.rank}: loading failed: "
                                  f"{type(err).__name__}: {err}")
        outcomes = coord.all_gather(outcome)
        stop = next((o[1] for o in outcomes if o is not None and o[0] == "stop"), None)
        if stop is not None:
            raise stop
        damaged = [o[1] for o in outcomes if o is not None]
        if damaged:
            reason = "; ".join(damaged)
            skipped.append({"epoch": key.epoch, "batch": key.batch, "path": str(directory),
                            "reason": reason})
            restorer.log.warning(f"skipping {directory}: {reason}")
            continue
        assert restored is not None and candidate.info is not None
        for note in restored.notes:
            restorer.log.info(note)
        for note in restored.apply():
            restorer.log.warning(note)
        best = candidate.best or BestSoFar(None, None)
        restorer.log.restarting_from_epoch(key.epoch)
        if verbose:
            restorer.log.info(f"restarted from {directory} ({where_in(key)}; rank {coord.rank} "
                              f"of {coord.world_size}; best={best.value} at epoch {best.epoch})")
        return restart_result(candidate.info, key, directory, best, skipped)
    failure: BaseException | None = None
    if coord.is_writer:
        why = where.why if not candidates else "every checkpoint failed validation"
        try:
            restorer.none_usable(why, skipped)
        except CkptError as err:
            failure = err
    failure = coord.broadcast(failure)
    if failure is not None:
        raise failure
    return None


def _judge(restorer: Restorer, layout: Any, key: CkptKey) -> _Candidate:
    directory = layout.epoch_dir(key.epoch, key.batch)
    checked = restorer.check(layout, key)
    if isinstance(checked, str):
        return _Candidate(key, str(directory), None, None, checked)
    info, best = checked
    return _Candidate(key, str(directory), info, best, None)
