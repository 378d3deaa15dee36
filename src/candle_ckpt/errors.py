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
          ├── CheckpointRestoreError    (+ RuntimeError)   copying a checked checkpoint into
          │                                                the model failed part-way
          ├── CheckpointLockedError     (+ BlockingIOError) another writer holds the directory
          │    └── LockLostError                           the lock no longer protects this writer
          │                                                (forked child, directory replaced)
          ├── CheckpointWriteError      (+ OSError)        a save failed (disk full, ...)
          ├── CheckpointDeleteError     (+ OSError)        the keep policy could not delete one
          ├── UnsafeFileError           (+ OSError)        a link / FIFO / device where a
          │                                                regular file of ours belongs
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


class CheckpointRestoreError(CkptError, RuntimeError):
    """Copying a checkpoint that was read and checked whole into the live objects failed.

    Everything a file holds is read and checked before anything live changes, so this is
    the framework failing (a layer's own loading code, memory), not the file: some live
    variables may already hold the checkpoint's values. Restart raises it rather than
    falling back or starting from scratch over a model that is neither; the message
    names the checkpoint and the cause (chained as ``__cause__``).
    """


class CheckpointLockedError(CkptError, BlockingIOError):
    """Another process holds the checkpoint directory."""


class LockLostError(CheckpointLockedError):
    """The writer lock no longer protects this writer.

    Raised by ``WriterLock.check()`` in a forked child of the lock holder (the child never
    holds the lock), and when the locked directory or its ``ckpt.lock`` was deleted or
    replaced while the writer ran (another process could now lock the new one).
    """


class CheckpointWriteError(CkptError, OSError):
    """Writing a checkpoint failed; earlier checkpoints and ``last`` are untouched."""


class CheckpointDeleteError(CkptError, OSError):
    """Deleting an old checkpoint failed (EBUSY, EPERM, ENOTEMPTY, NFS ``.nfs*`` files).

    Only ever raised after the commit point: the new checkpoint and ``last`` are in
    place, so a caller logs it and retries later; ``errno``/``filename`` are set.
    """


class UnsafeFileError(CkptError, OSError):
    """A symlink, FIFO, device or directory where candle-ckpt expects its regular file.

    Raised instead of following the link or opening the special file (which could
    truncate a file elsewhere, or hang); ``filename`` names the path.
    """


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
    "CheckpointMismatchError",
    "CheckpointRestoreError",
    "CheckpointLockedError",
    "CheckpointWriteError",
    "CheckpointDeleteError",
    "LockLostError",
    "UnsafeFileError",
    "MetricNotFoundError",
]
