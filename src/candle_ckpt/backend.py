"""The backend protocol: what the engine needs from a framework, and nothing more.

Three calls, each returning data (no results travel through attributes):

- ``capture(live)`` on the training thread: the state to save. ``live=False`` copies it
  to host memory (an async save writes it later, while training goes on); ``live=True``
  may return references to the live state (a sync save is written before training
  resumes). The engine captures only when no save is in flight, so a backend may reuse
  its previous capture's buffers.
- ``write(snapshot, sink)`` (possibly on the writer thread): write the snapshot's files
  through the :class:`~candle_ckpt.storage.sink.FileSink` and return a :class:`Written`.
- ``load(directory, info)``: read and check the whole checkpoint against the live
  objects *without changing them*, and return a :class:`Restored` whose ``apply()``
  copies the values in. A damaged file raises any exception (restart falls back to an
  older checkpoint); a checkpoint that does not fit the model raises
  :class:`~candle_ckpt.errors.CheckpointMismatchError` (restart stops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .record import Written
from .storage.sink import FileSink

__all__ = ["Backend", "Restored", "Written"]


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

    name: str

    def capture(self, live: bool) -> Any: ...

    def write(self, snapshot: Any, sink: FileSink) -> Written: ...

    def load(self, directory: Path, info: dict[str, Any]) -> Restored: ...


class NoBackend:
    """The base engine's backend: it has no state to save (subclasses bring one)."""

    name = "none"

    def capture(self, live: bool) -> Any:
        raise NotImplementedError(
            "CandleCkpt has no backend: use CandleCkptKeras, CandleCkptPyTorch or "
            "candle_ckpt.testing.CandleCkptFiles"
        )

    def write(self, snapshot: Any, sink: FileSink) -> Written:
        raise NotImplementedError("CandleCkpt has no backend to write a checkpoint")

    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        raise NotImplementedError("CandleCkpt has no backend to load a checkpoint")
