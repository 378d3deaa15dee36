"""Coordination of the processes that checkpoint one job: one code path for one and many.

Saving and restarting are written once, as a short script of steps over a
:class:`Coordinator` (as torch.distributed.checkpoint's ``_DistWrapper`` does):

- ``broadcast(obj)``: rank 0's value on every rank;
- ``all_gather(obj)``: every rank's value, in rank order, on every rank;
- ``step(what, fn, writer_only=False)``: run ``fn`` on every rank (or rank 0 only), and
  make a failure on any rank a failure on every rank, as one :class:`StepFailed`;
- ``attempt(fn)``: run ``fn`` now and report its failure at the next ``step`` (a capture
  that fails on one rank must still reach the collective save, or the others wait).

:class:`LocalCoordinator` is the single process: every collective is the identity and a
step's exception propagates unchanged, so a one-process save raises exactly what its
code raised. :class:`TorchCoordinator` runs the collectives on a gloo group of its own,
so that a background (``ckpt_async``) save's collectives never interleave with the
training loop's on the default group (DDP's all-reduces, possibly on NCCL).

``import candle_ckpt.coordination`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import CkptError, CkptParamError
from .params import DISTRIBUTED_METRICS

T = TypeVar("T")


class StepFailed(Exception):
    """A step failed on some rank; raised on every rank alike (never in one process)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message


class LostContact(Exception):
    """A collective itself failed: another rank died or hangs."""

    def __init__(self, rank: int, cause: BaseException) -> None:
        super().__init__(f"rank {rank} lost contact with the other ranks "
                         f"({type(cause).__name__}: {cause})")
        self.cause = cause


@dataclass(frozen=True)
class Deferred:
    """The failure ``attempt`` caught on this rank, reported by the next ``step``."""

    what: str
    error: Exception


@dataclass(frozen=True)
class _Failure:
    """Why a step failed on some rank: the same text and errno reach every rank."""

    errno: int
    message: str


class Coordinator:
    """Rank, world size and the collectives of one checkpointing job (see module doc)."""

    rank = 0
    world_size = 1
    multi_process = False  # True: checkpoints record their ranks (per-rank files)

    @property
    def is_writer(self) -> bool:
        """Rank 0 holds the lock, writes the shared files and commits."""
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        raise NotImplementedError

    def all_gather(self, obj: Any, batch: bool = False) -> list[Any]:
        raise NotImplementedError

    def attempt(self, what: str, fn: Callable[[], T]) -> T | Deferred:
        raise NotImplementedError

    def step(self, what: str, fn: Callable[[], T], writer_only: bool = False,
             pending: Any = None) -> list[T]:
        """Every rank's result of ``fn`` (rank 0's only, when ``writer_only``).

        ``pending``: a :class:`Deferred` failure of this rank's (from ``attempt``) that
        fails this step instead of running ``fn``.

        Raises:
            StepFailed: ``fn`` failed on some rank (every rank raises it alike).
        """
        raise NotImplementedError

    def describe(self) -> str:
        """How a log line names this process among the job's ("" for one process)."""
        return ""

    def blame(self, message: str) -> str:
        """``message`` as this rank's, where there are ranks to tell apart."""
        return f"rank {self.rank}: {message}" if self.multi_process else message

    def decide(self, decide: Callable[[float | None], T], metric: float | None,
               how: str) -> T:
        """Rank 0's decision on the metric reduced across ranks, on every rank."""
        reduced = reduce_metric(self.all_gather(metric), how)
        return self.broadcast(decide(reduced) if self.is_writer else None)

    def agree_on_stop(self, due: Any, interval_due: bool) -> tuple[Any, bool]:
        """Mid-epoch saves together: a stop due on any rank (a signal reaches one rank
        first, clocks differ) is a stop on all; the lowest such rank's reason."""
        outcomes = self.all_gather((due, interval_due), batch=True)
        first = next((d for d, _ in outcomes if d is not None), None)
        return first, any(i for _, i in outcomes)

    def on_writer(self, fn: Callable[[], T]) -> T:
        """Rank 0 computes; every rank gets its result or raises its error."""
        outcome: Any = None
        if self.is_writer:
            try:
                outcome = ("ok", fn())
            except Exception as err:
                outcome = ("error", err)
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise value
        return value


class LocalCoordinator(Coordinator):
    """One process: every collective is the identity; failures propagate unchanged."""

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_gather(self, obj: Any, batch: bool = False) -> list[Any]:
        return [obj]

    def attempt(self, what: str, fn: Callable[[], T]) -> T | Deferred:
        return fn()

    def step(self, what: str, fn: Callable[[], T], writer_only: bool = False,
             pending: Any = None) -> list[T]:
        return [fn()]

    def on_writer(self, fn: Callable[[], T]) -> T:
        return fn()


class TorchCoordinator(Coordinator):
    """The ranks of an initialized torch.distributed process group."""

    multi_process = True

    def __init__(self, rank: int, world_size: int, group: Any = None,
                 batch_group: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group
        # ckpt_batch's agreement runs on the training thread while a background save may
        # be using ``group`` on the writer thread: two threads must not share one group.
        self.batch_group = batch_group

    @classmethod
    def from_torch(cls) -> TorchCoordinator | None:
        """The coordinator of the initialized default process group, or None.

        Must be called on every rank at the same point (it creates a process group).
        """
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch without distributed support
            return None
        if not dist.is_available() or not dist.is_initialized():
            return None
        # Object collectives need a CPU backend; and see batch_group above.
        group = dist.new_group(backend="gloo")
        batch_group = dist.new_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), group, batch_group)

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj if self.is_writer else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group)
        except Exception as err:
            raise LostContact(self.rank, err) from err
        return box[0]

    def all_gather(self, obj: Any, batch: bool = False) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.batch_group if batch else self.group)
        except Exception as err:
            raise LostContact(self.rank, err) from err
        return out

    def attempt(self, what: str, fn: Callable[[], T]) -> T | Deferred:
        try:
            return fn()
        except Exception as err:
            return Deferred(what, err)

    def step(self, what: str, fn: Callable[[], T], writer_only: bool = False,
             pending: Any = None) -> list[T]:
        outcome: Any = None
        if isinstance(pending, Deferred):
            outcome = _failure(self.rank, pending.what, pending.error)
        elif self.is_writer or not writer_only:
            try:
                outcome = fn()
            except Exception as err:
                outcome = _failure(self.rank, what, err)
        outcomes = self.all_gather(outcome)
        failure = next((o for o in outcomes if isinstance(o, _Failure)), None)
        if failure is not None:
            raise StepFailed(failure.errno, failure.message)
        return outcomes[:1] if writer_only else outcomes

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def _failure(rank: int, what: str, err: BaseException) -> _Failure:
    code = getattr(err, "errno", None)
    text = getattr(err, "strerror", None) if isinstance(err, OSError) and \
        not isinstance(err, CkptError) else None
    return _Failure(code if isinstance(code, int) else 0,
                    f"rank {rank}: {what}: {type(err).__name__}: {text or err}")


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
