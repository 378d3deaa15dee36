"""Removing unlisted checkpoint directories, on a thread of their own."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from ..errors import (
    CheckpointDeleteError,
)
from .fsio import step
from .safeio import printable

_removers: weakref.WeakSet[Remover] = weakref.WeakSet()


def _forget_removals_in_child() -> None:
    for remover in list(_removers):
        remover._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_removals_in_child)


class Remover:
    """Removes unlisted checkpoint directories on a thread of its own, one at a time.

    Only ``.deleting-*`` directories (already not checkpoints) are handed to it, so a
    crash part-way leaves nothing restart could mistake for a checkpoint; the next
    engine's :meth:`Committer.recover` removes what is left.
    """

    def __init__(self) -> None:
        self._forget()
        _removers.add(self)

    def _forget(self) -> None:
        """A fresh state; also in a forked child, which removes nothing of its parent's
        (and whose copy of the lock may have been held by the parent's thread)."""
        self._lock = threading.Lock()
        self._todo: list[tuple[Path, str, Callable[[], None] | None]] = []
        self._queued: set[Path] = set()  # in _todo, or being removed now
        self._failed: list[CheckpointDeleteError] = []
        self._thread: threading.Thread | None = None

    def submit(self, path: Path, what: str, task: Callable[[], None] | None = None) -> None:
        """Remove ``path`` (a file or a tree, links not followed), unless it is queued.

        ``task``: run it instead (what it frees lies under ``path``, e.g. the collection
        of unreferenced objects); it runs after everything submitted before it.
        """
        with self._lock:
            if path in self._queued:
                return
            self._queued.add(path)
            self._todo.append((path, what, task))
            if self._thread is None:
                # Not a daemon: at interpreter exit the space is freed, not left to recover().
                thread = threading.Thread(target=self._run, name="candle-ckpt-remove")
                thread.start()  # it waits for the lock we hold, so it sees _thread set
                self._thread = thread

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._todo:
                    self._thread = None
                    return
                path, what, task = self._todo.pop(0)
            failure: CheckpointDeleteError | None = None
            try:
                if task is not None:
                    task()
                else:
                    rmtree(path)
                    step("epoch-deleted")
            except FileNotFoundError:
                pass  # gone already (removed by hand, or by a retry)
            except OSError as err:
                failure = delete_error(err, f"{what}; purge_deletions() retries", path)
            except BaseException as err:  # never lose a failure silently
                failure = CheckpointDeleteError(0, f"{what}: {type(err).__name__}: {err}",
                                                os.fspath(path))
            with self._lock:
                self._queued.discard(path)
                if failure is not None:
                    self._failed.append(failure)

    def wait(self) -> list[CheckpointDeleteError]:
        """Wait until everything submitted is removed; what failed since the last call."""
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                break
            thread.join()  # it clears _thread itself when nothing is left
        with self._lock:
            failed, self._failed = self._failed, []
        return failed


def delete_error(err: OSError, what: str, path: Path) -> CheckpointDeleteError:
    where = err.filename if err.filename is not None else os.fspath(path)
    return CheckpointDeleteError(
        err.errno or 0,
        f"{what}: {err.strerror or err} ({printable(where)})",
        where,
    )


def rmtree(path: Path) -> None:
    """Remove a file, a link (not its target) or a directory tree (links not followed)."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
    else:
        shutil.rmtree(path)
