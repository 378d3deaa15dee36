"""The backend protocol, and what every backend shares.

A backend is what the engine needs from a framework, and nothing more. Its three calls
return data (no results travel through attributes, no input is set beforehand); the
engine calls them in this order:

1. ``capture(live, progress)`` on the training thread: the state to save. ``live=False``
   copies it to host memory (an async save writes it later, while training goes on);
   ``live=True`` may return references to the live state (a sync save is written before
   training resumes). ``progress`` says where training is (the epoch to resume from and
   its metric), for formats that record it. The engine captures only when no save is in
   flight, so a backend may copy into its previous capture's buffers
   (:class:`CaptureBuffers`, :class:`BufferReuse`).
2. ``write(snapshot, sink)`` (possibly on the writer thread): write the snapshot's files
   through the :class:`~candle_ckpt.storage.sink.FileSink` and return a :class:`Written`.
3. ``load(directory, info)`` at restart: read and check the whole checkpoint against the
   live objects *without changing them*, and return a :class:`Restored` whose
   ``apply()`` copies the values in. A damaged file raises any exception (restart falls
   back to an older checkpoint), a file name in ``ckpt-info.json`` that is not one of the
   checkpoint's files :class:`~candle_ckpt.errors.CheckpointCorruptError`
   (:func:`member_name`); a checkpoint that does not fit the model raises
   :class:`~candle_ckpt.errors.CheckpointMismatchError` (restart stops).

The global RNG states every backend saves are in :mod:`candle_ckpt.backends.rng`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..errors import CheckpointCorruptError
from ..record import Written
from ..storage.integrity import safe_member

if TYPE_CHECKING:
    from ..storage.sink import FileSink

__all__ = ["Backend", "BufferReuse", "CaptureBuffers", "NoBackend", "Progress", "Restored",
           "UNKNOWN_PROGRESS", "Written", "member_name"]


@dataclass(frozen=True)
class Progress:
    """Where training is when a state is captured (what the original CANDLE torch file
    records as ``epoch`` and ``loss``). ``Progress()``: not known (a capture made outside
    a save, e.g. ``capture_state()``)."""

    epoch: int | None = None  # the epoch a restart resumes from (completed epochs)
    metric: float | None = None  # the epoch's metric, as the caller gave it
    batch: int = 0  # batches done in the epoch being trained (> 0: a mid-epoch save)


UNKNOWN_PROGRESS = Progress()


@dataclass
class Restored:
    """A checked checkpoint, ready to be copied into the live objects.

    ``apply()`` changes the live state and returns notes for the log (e.g. "holds no
    optimizer state"); ``notes`` are what checking found worth saying beforehand.
    """

    apply: Callable[[], list[str]]
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    """What a framework backend implements (see the module docstring)."""

    def capture(self, live: bool, progress: Progress = UNKNOWN_PROGRESS) -> Any: ...

    def write(self, snapshot: Any, sink: FileSink) -> Written: ...

    def load(self, directory: Path, info: dict[str, Any]) -> Restored: ...


class NoBackend:
    """The base engine's backend: it has no state to save (subclasses bring one)."""

    def capture(self, live: bool, progress: Progress = UNKNOWN_PROGRESS) -> Any:
        raise NotImplementedError(
            "CandleCkpt has no backend: use CandleCkptKeras, CandleCkptPyTorch or "
            "candle_ckpt.testing.CandleCkptFiles"
        )

    def write(self, snapshot: Any, sink: FileSink) -> Written:
        raise NotImplementedError("CandleCkpt has no backend to write a checkpoint")

    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        raise NotImplementedError("CandleCkpt has no backend to load a checkpoint")


# ------------------------------------------------------------------------ file names
def member_name(info: dict[str, Any], key: str, default: str) -> str:
    """The file ``info[key]`` names inside a checkpoint directory (``default`` if unset).

    Raises:
        CheckpointCorruptError: it is not a plain file name of the checkpoint (a path,
            ``..``, a hidden name, a control character, not a string).
    """
    name = info.get(key) or default
    if not safe_member(name) or name.startswith("."):
        raise CheckpointCorruptError(
            f"{key} {name!r} is not the name of a file inside the checkpoint")
    return str(name)


# ------------------------------------------------------------------------ capture buffers
S = TypeVar("S")  # a live value (a tensor, a variable's array)
B = TypeVar("B")  # its host copy


class BufferReuse(ABC, Generic[S, B]):
    """Copy into the previous capture's buffer if it fits, else copy afresh.

    A capture of a large model would otherwise allocate (and page-fault in) the whole
    state again at every save; the engine captures only when no save is in flight, so
    the previous capture's copies are free to overwrite. Each backend says what fits
    and how to copy; the rule is this one.
    """

    def host_copy(self, source: S, into: Any) -> B:
        """A host copy of ``source``: ``into`` (an earlier copy) overwritten if it fits."""
        if self.fits(into, source):
            return self.copy_into(into, source)
        return self.fresh_copy(source)

    @abstractmethod
    def fits(self, buffer: Any, source: S) -> bool:
        """Can ``buffer`` take ``source``'s values without changing its layout?"""

    @abstractmethod
    def copy_into(self, buffer: B, source: S) -> B:
        """Overwrite ``buffer`` (which fits) with ``source``'s values; return it."""

    @abstractmethod
    def fresh_copy(self, source: S) -> B:
        """A new host copy of ``source``."""


class CaptureBuffers:
    """The host copies of a backend's previous captures, by entry, to copy into next time.

    Copies made for a background save (``live=False``) and the host copies a sync save
    needed (``live=True``: what cannot be written as it is, e.g. GPU tensors) are kept
    apart, so neither overwrites what the other's save may still hold. A live tensor a
    sync save shares is never kept here: a buffer must never alias live state.
    """

    def __init__(self) -> None:
        self._kept: dict[bool, dict[str, Any]] = {False: {}, True: {}}

    def previous(self, live: bool) -> dict[str, Any]:
        """The copies kept from the last capture of this kind (empty after release)."""
        return self._kept[live]

    def keep(self, live: bool, copies: dict[str, Any]) -> None:
        """Keep ``copies`` (owned by no live object) for the next capture of this kind."""
        self._kept[live] = dict(copies)

    def release(self) -> None:
        """Drop every kept copy (the engine is closed; the memory goes back)."""
        self._kept = {False: {}, True: {}}
