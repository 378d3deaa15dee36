"""Errors raised by candle-ckpt.

Every error derives from :class:`CkptError` and from the built-in exception a caller
would naturally catch, so ``except ValueError`` and ``except CkptError`` both work::

    Exception
     └── CkptError
          ├── CkptParamError            (+ ValueError)     bad hyperparameter or argument
          │    └── CkptParamTypeError    (+ TypeError)      value not convertible to its type
          ├── CheckpointNotFoundError   (+ FileNotFoundError) nothing usable to restart from
          ├── CheckpointCorruptError    (+ ValueError)     size / checksum / JSON / link problems
          ├── CheckpointMismatchError   (+ ValueError)     checkpoint does not fit the model
          ├── CheckpointLockedError     (+ BlockingIOError) another process writes the directory
          ├── CheckpointWriteError      (+ OSError)        a save failed (disk full, ...)
          └── MetricNotFoundError       (+ KeyError)       best metric missing from the epoch's logs
"""

from __future__ import annotations


class CkptError(Exception):
    """Base class of every candle-ckpt error."""


class CkptParamError(CkptError, ValueError):
    """A hyperparameter or argument has a value that is not accepted."""


class CkptParamTypeError(CkptParamError, TypeError):
    """A hyperparameter cannot be converted to its type (the original raised TypeError)."""


class CheckpointNotFoundError(CkptError, FileNotFoundError):
    """``ckpt_restart_mode="required"`` and no usable checkpoint exists."""


class CheckpointCorruptError(CkptError, ValueError):
    """A checkpoint or a ``last``/``best`` pointer failed validation."""


class CheckpointMismatchError(CkptError, ValueError):
    """A valid checkpoint that does not fit the live model or optimizer.

    Raised before anything is loaded; the message names the first mismatching variable
    with both shapes or types. Restart does not fall back or start from scratch.
    """


class CheckpointLockedError(CkptError, BlockingIOError):
    """Another process holds the checkpoint directory."""


class CheckpointWriteError(CkptError, OSError):
    """Writing a checkpoint failed; earlier checkpoints and ``last`` are untouched."""


class MetricNotFoundError(CkptError, KeyError):
    """The best metric is not among the metrics reported for the epoch."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


__all__ = [
    "CkptError",
    "CkptParamError",
    "CkptParamTypeError",
    "CheckpointNotFoundError",
    "CheckpointCorruptError",
    "CheckpointLockedError",
    "CheckpointWriteError",
    "MetricNotFoundError",
]
