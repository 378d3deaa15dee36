"""The writer lock of a checkpoint directory: one writer per directory.

flock is released by the kernel when the last descriptor of the open file goes away, so
a lock left by a killed run never blocks the next one. The descriptor is O_CLOEXEC (a
subprocess never inherits it) and closed in a fork()ed child (so a DataLoader worker
that outlives a SIGKILLed trainer does not keep the directory locked). One writer per
directory, also within one process.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import (
    CheckpointLockedError,
    LockLostError,
)
from .layout import (
    LOCK_FILE,
    TIME_FORMAT,
    Layout,
)
from .safeio import display_path, open_regular, printable

_held: dict[tuple[int, int], WriterLock] = {}
_guard = threading.RLock()  # re-entrant: a GC-run __del__ may release inside acquire


class WriterLock:
    """The writer lock of one checkpoint directory, held by this process.

    ``check()`` before each save proves it still protects the writer; ``release()``
    (idempotent) gives it up. Directories are told apart by ``(st_dev, st_ino)``, not by
    ``realpath`` (which fails under a working directory deeper than PATH_MAX).
    """

    def __init__(self, root: Path, fd: int, directory_id: tuple[int, int],
                 file_id: tuple[int, int]) -> None:
        self.root = root
        self.fd = fd
        self.pid = os.getpid()
        self.directory_id = directory_id
        self.file_id = file_id

    @property
    def key(self) -> str:
        """What :func:`release_lock` takes (the older ``acquire_lock`` API)."""
        return f"{self.directory_id[0]}:{self.directory_id[1]}"

    @property
    def held(self) -> bool:
        return self.fd >= 0 and self.pid == os.getpid()

    def check(self) -> None:
        """Raise unless this process still holds the lock of the same directory.

        Raises:
            LockLostError: called in a fork()ed child of the holder; the lock was
                released; the directory or its ``ckpt.lock`` was deleted or replaced
                (another writer could lock the new one: saving on would make two).
        """
        where = display_path(self.root)
        if os.getpid() != self.pid:
            raise LockLostError(
                f"checkpoint directory {where!r} is locked by pid {self.pid}; this process "
                f"(pid {os.getpid()}) is a fork()ed child of it and holds no lock: only the "
                "parent may save. Save from the parent, or build a new engine on another "
                "ckpt_directory in the child"
            )
        if self.fd < 0:
            raise LockLostError(
                f"the writer lock of {where!r} was released (close() was called); build a "
                "new engine to write there again"
            )
        try:
            st = os.stat(self.root)
        except OSError as err:
            raise LockLostError(
                f"checkpoint directory {where!r} cannot be found any more "
                f"({err.strerror or err}): it was deleted or moved while this run wrote "
                "into it; refusing to save into whatever is there now"
            ) from None
        if (st.st_dev, st.st_ino) != self.directory_id:
            raise LockLostError(
                f"checkpoint directory {where!r} was replaced while this run wrote into it "
                "(it is another directory now, which this lock does not protect); "
                "refusing to save there. Restart the run to take the new directory"
            )
        try:
            lst = os.stat(self.root / LOCK_FILE, follow_symlinks=False)
        except OSError:
            lst = None
        if lst is None or (lst.st_dev, lst.st_ino) != self.file_id:
            raise LockLostError(
                f"{display_path(self.root / LOCK_FILE)!r} was deleted or replaced while this "
                "run held it, so another process may lock the new file and write too; "
                "refusing to save. Restart the run"
            )

    def release(self) -> None:
        with _guard:
            if self.fd >= 0 and self.pid == os.getpid():
                if _held.get(self.directory_id) is self:
                    del _held[self.directory_id]
                os.close(self.fd)  # the last descriptor of the open file: drops the flock
            self.fd = -1

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "not held"
        return f"WriterLock({display_path(self.root)!r}, pid {self.pid}, {state})"


def acquire_writer_lock(root: Path) -> WriterLock:
    """Take the writer lock ``<root>/ckpt.lock`` (root is created if missing).

    Raises:
        CheckpointLockedError: another process holds it, or another engine of this
            process does (one writer per directory, also within a process).
        UnsafeFileError: ``ckpt.lock`` is a symlink, FIFO, device or directory (it is
            never followed: a planted link must not make us truncate its target).
        OSError: the directory or lock file cannot be created or opened.
    """
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    where = display_path(root)
    # Open the lock file relative to a descriptor of the directory: the key and the lock
    # file are then of the same directory, and no absolute path is ever built.
    dfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        dst = os.fstat(dfd)
        directory_id = (dst.st_dev, dst.st_ino)
        with _guard:
            mine = _held.get(directory_id)
            if mine is not None and mine.held:
                raise CheckpointLockedError(
                    f"checkpoint directory {where!r} is already held by this process "
                    f"(pid {os.getpid()}): another engine writes it. Only one writer may use "
                    "a directory at a time, also within a process; close() the other engine "
                    "first, or use another ckpt_directory"
                )
            fd = open_regular(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644,
                              f"the lock file {where}/{LOCK_FILE}", dir_fd=dfd)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    try:
                        raw = os.pread(fd, 200, 0)
                    except OSError:
                        raw = b""
                    holder = printable(raw.decode("utf-8", "replace").strip()) or "unknown"
                    raise CheckpointLockedError(
                        f"checkpoint directory {where!r} is in use by another process "
                        f"({holder}); only one writer may use it at a time. Use another "
                        "ckpt_directory, or wait for that run to end."
                    ) from None
                fst = os.fstat(fd)
                # A hard link planted as ckpt.lock would make the truncation below hit
                # another file's data: only a file of ours (one link) records the holder.
                if fst.st_nlink == 1:
                    os.ftruncate(fd, 0)
                    os.pwrite(
                        fd,
                        f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime(TIME_FORMAT)}\n".encode(),
                        0,
                    )
            except BaseException:
                os.close(fd)
                raise
            lock = WriterLock(root, fd, directory_id, (fst.st_dev, fst.st_ino))
            _held[directory_id] = lock
            return lock
    finally:
        os.close(dfd)


def _forget_locks_in_child() -> None:
    """After fork(): the child holds no lock (its copies of the descriptors are closed).

    Closing them does not unlock the parent (flock belongs to the open file, which the
    parent still has open); it only stops the child from keeping the lock alive after
    the parent dies. The WriterLock objects the child inherited fail ``check()``.
    """
    global _guard
    _guard = threading.RLock()  # another thread may have held it at the fork
    for lock in list(_held.values()):
        try:
            os.close(lock.fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)

_by_key: dict[str, WriterLock] = {}


def acquire_lock(layout: Layout) -> tuple[str, bool]:
    """Take the writer lock of a checkpoint directory (older API; see WriterLock).

    Returns:
        The key for :func:`release_lock`, and True (a process never shares the lock
        between engines any more; the second one gets CheckpointLockedError).
    """
    lock = acquire_writer_lock(layout.root)
    _by_key[lock.key] = lock
    return lock.key, True


def release_lock(key: str) -> None:
    lock = _by_key.pop(key, None)
    if lock is not None:
        lock.release()


class Lease:
    """The writer lock as an engine holds it: taken when first needed (and again after
    :meth:`release`), a crash's leftovers recovered as soon as it is taken (we are then
    the only writer), and proved still held before each write.

    Args:
        root: the checkpoint directory.
        recover: called once each time the lock is taken.
        writer: False on a process that never writes (multi-process: rank 0 holds the
            lock for all); then every call is a no-op.
    """

    def __init__(self, root: Path, recover: Callable[[], None], writer: bool = True) -> None:
        self.root, self._recover, self.writer = root, recover, writer
        self._lock: WriterLock | None = None

    def ensure(self) -> None:
        """Hold the lock (taking it, then recovering, if not held); prove it is still ours.

        Raises:
            CheckpointLockedError: another writer holds the directory.
            LockLostError: the lock held no longer protects the directory.
        """
        if not self.writer:
            return
        if self._lock is None:
            lock = acquire_writer_lock(self.root)
            try:
                self._recover()
            except BaseException:
                lock.release()
                raise
            self._lock = lock
        self._lock.check()

    def release(self) -> None:
        """Give the lock up (idempotent); :meth:`ensure` takes it again."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
