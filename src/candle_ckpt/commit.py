"""The commit protocol: work dir, fsync, rename, atomic relative links, the writer lock.

A kill -9 between any two steps leaves a tree from which restart resumes from the
checkpoint ``last`` points to; ``last`` is moved only by ``os.replace``, so it is never
missing. Steps call :func:`_step` with their name so tests can crash exactly there.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import math
import os
import queue
import shutil
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import (
    CheckpointDeleteError,
    CheckpointLockedError,
    CheckpointWriteError,
    CkptParamError,
    LockLostError,
)
from .integrity import ChecksumTally, checksum_fd, new_hasher, safe_member
from .layout import (
    _ASIDE_PREFIX,
    _DELETING_PREFIX,
    INFO_FILE,
    LOCK_FILE,
    CkptKey,
    Layout,
    parse_epoch,
)
from .safeio import create_exclusive, display_path, open_regular, printable

# Crash injection for tests: called with each step's name. Never set in production.
_on_step: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _on_step is not None:
        _on_step(name)


# fsync of a directory is not supported everywhere (Windows cannot open one; some
# filesystems answer EINVAL): durability is then the filesystem's. Anything else (EIO,
# ENOSPC, EMFILE) is a real failure and is raised.
_FSYNC_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR,
     errno.EACCES, errno.EPERM}
)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable.

    Raises:
        OSError: the directory cannot be opened or synced for a reason other than the
            platform not supporting it (EIO, ENOSPC, EMFILE ...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno in _FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


_OVERLAP_BYTES = 4 << 20  # writes this large are hashed while the kernel takes them


class _HashThread:
    """One thread that hashes the buffers handed to it, in order.

    Not a ``concurrent.futures`` executor: those refuse new work once interpreter exit
    has begun (their hook runs before non-daemon threads are joined), which is exactly
    when a background save of the last epoch may still be writing.
    """

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self._todo: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        # A daemon: a writer that is never closed must not hold up interpreter exit.
        self._thread = threading.Thread(target=self._run, name="candle-ckpt-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (view := self._todo.get()) is not None:
            try:
                self._hasher.update(view)
            except BaseException as err:  # raised by result(), on the writer's thread
                self._done.put(err)
            else:
                self._done.put(None)

    def start(self, view: memoryview) -> None:
        self._todo.put(view)

    def result(self) -> None:
        """Wait for the buffer handed to start(); raise what hashing it raised."""
        err = self._done.get()
        if err is not None:
            raise err

    def stop(self) -> None:
        self._todo.put(None)
        self._thread.join()


class _HashingWriter(io.RawIOBase):
    """A write-only stream that checksums and counts bytes on their way to the file.

    A large write is hashed on a helper thread while this one is in the write system
    call (which releases the GIL), so a checksum costs little more than the write; both
    finish before ``write`` returns, so the caller's buffer is never used afterwards.
    Where no thread can be started (interpreter exit, on some Pythons), it hashes inline.
    """

    def __init__(self, raw: BinaryIO, algorithm: str | None,
                 tally: ChecksumTally | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._hasher = new_hasher(algorithm, tally) if algorithm else None
        self._helper: _HashThread | None = None
        self._inline = False  # no helper thread could be started
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        hasher = self._hasher
        helper = self._overlap_helper() if hasher is not None and \
            len(view) >= _OVERLAP_BYTES else None
        if helper is not None:
            helper.start(view)
            try:
                self._raw.write(view)
            finally:
                helper.result()  # (its error, if any, too)
        else:
            self._raw.write(view)
            if hasher is not None:
                hasher.update(view)
        self.size += len(view)
        return len(view)

    def _overlap_helper(self) -> _HashThread | None:
        if self._helper is None and not self._inline:
            try:
                self._helper = _HashThread(self._hasher)
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                self._inline = True
        return self._helper

    def close(self) -> None:
        if self._helper is not None:
            self._helper.stop()
            self._helper = None
        super().close()

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    @property
    def checksum(self) -> str | None:
        return self._hasher.hexdigest() if self._hasher is not None else None


class FileSink:
    """Where a backend writes a checkpoint's files; keeps the files manifest.

    ``open(name)`` gives a stream checksummed while written; ``path(name)`` serves
    frameworks that insist on writing by path (those files are fsynced and, with
    checksums on, read once after the backend returns). ``tally`` counts what checksumming
    cost (the log's ``checksummed:`` line).
    """

    def __init__(self, directory: Path, algorithm: str | None,
                 tally: ChecksumTally | None = None) -> None:
        self.directory = directory
        self.algorithm = algorithm
        self.tally = tally
        self.files: dict[str, dict[str, Any]] = {}
        self._by_path: list[str] = []

    def _claim(self, name: str) -> Path:
        # Flat names only: restart accepts nothing else (no '/', '\\', '..', NUL), and a
        # file that could not be restored must not be written in the first place.
        if not isinstance(name, str) or not safe_member(name) or name == INFO_FILE:
            raise CkptParamError(
                f"checkpoint file name {printable(name)!r} is not accepted; give a plain "
                "file name (no '/', '\\', '..', NUL or control characters, at most 255 "
                f"bytes) other than {INFO_FILE!r}"
            )
        if name in self.files or name in self._by_path:
            raise CkptParamError(f"checkpoint file name {name!r} is written twice")
        return self.directory / name

    @contextmanager
    def open(self, name: str) -> Iterator[_HashingWriter]:
        path = self._claim(name)
        # O_EXCL|O_NOFOLLOW: the file is new, ours, and no link planted in work/ is used.
        with os.fdopen(create_exclusive(path), "wb", buffering=1 << 20) as raw:
            writer = _HashingWriter(raw, self.algorithm, self.tally)
            try:
                yield writer
            finally:
                writer.close()  # its helper thread (the file stays open)
            raw.flush()
            os.fsync(raw.fileno())
        entry: dict[str, Any] = {"size": writer.size}
        if writer.checksum is not None:
            entry["checksum"] = writer.checksum
        self.files[name] = entry
        _step("file-written")

    def path(self, name: str) -> Path:
        path = self._claim(name)
        if os.path.lexists(path):
            raise CkptParamError(
                f"checkpoint file name {name!r}: {display_path(path)} exists already"
            )
        self._by_path.append(name)
        return path

    def adopt(self, name: str) -> None:
        """Take a file a framework wrote into the directory under a name of its own
        choosing (DCP names its shards); fsynced and checksummed by finish(), as path()'s.
        """
        self._claim(name)
        self._by_path.append(name)

    def finish(self) -> dict[str, dict[str, Any]]:
        """fsync the files written by path and add them to the manifest.

        Raises:
            CheckpointWriteError: the backend did not write a file it asked a path for,
                or wrote something other than a regular file there.
            OSError: fsync or reading failed (ENOSPC, EIO ...).
        """
        for name in self._by_path:
            path = self.directory / name
            try:
                fd = open_regular(path, os.O_RDONLY, role="a checkpoint file")
            except FileNotFoundError:
                raise CheckpointWriteError(
                    errno.ENOENT, f"the backend did not write {name!r}", str(path)
                ) from None
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.EINVAL):
                    raise CheckpointWriteError(
                        errno.EINVAL, f"the backend wrote {name!r} as something other than "
                        f"a regular file: {err}", str(path)
                    ) from None
                raise
            try:
                os.fsync(fd)
                entry: dict[str, Any] = {"size": os.fstat(fd).st_size}
                if self.algorithm:
                    entry["checksum"] = checksum_fd(fd, self.algorithm, self.tally)
            finally:
                os.close(fd)
            self.files[name] = entry
            _step("file-written")
        self._by_path.clear()
        fsync_dir(self.directory)
        return dict(sorted(self.files.items()))


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively, so the JSON stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_durable(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON to ``path`` atomically and durably.

    A new file (O_EXCL|O_NOFOLLOW) beside it is replaced over ``path``: whatever was at
    ``path`` (a planted link included) is replaced, never followed or truncated.

    Raises:
        OSError: writing, fsync or the rename failed (ENOSPC, EMFILE ...).
    """
    text = json.dumps(json_safe(data), indent=1, allow_nan=False, ensure_ascii=True)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        with os.fdopen(create_exclusive(tmp), "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------------------------------
# The writer lock. flock is released by the kernel when the last descriptor of the open
# file goes away, so a lock left by a killed run never blocks the next one. The
# descriptor is O_CLOEXEC (a subprocess never inherits it) and closed in a fork()ed
# child (so a DataLoader worker that outlives a SIGKILLed trainer does not keep the
# directory locked). One writer per directory, also within one process.

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
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
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


def held_lock(key: str) -> WriterLock | None:
    """The WriterLock behind a key from :func:`acquire_lock` (None once released)."""
    lock = _by_key.get(key)
    return lock if lock is not None and lock.held else None


def release_lock(key: str) -> None:
    lock = _by_key.pop(key, None)
    if lock is not None:
        lock.release()


# ---------------------------------------------------------------------------------------


class Committer:
    """Applies the commit protocol to one :class:`Layout` (always ours when writing)."""

    def __init__(self, layout: Layout, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.log = log
        self.remover = Remover()

    def recover(self) -> None:
        """Clean what a crash may have left: a stale work/, asides, half-deleted dirs.

        Never raises for what it cannot remove (an NFS ``.nfs*`` file, a read-only
        entry): it says so in the log; the next save raises if work/ is still in the way.
        """
        work = self.layout.work
        if os.path.lexists(work):
            self.log(f"removing stale work directory {display_path(work)} left by an "
                     "interrupted save")
            self._try_remove(work)
        for path in self.layout.leftovers():
            name = path.name
            if name.startswith(_ASIDE_PREFIX):
                epoch = parse_epoch(name[len(_ASIDE_PREFIX):].split(".")[0])
                if epoch is not None and not os.path.lexists(self.layout.epoch_dir(epoch)) \
                        and _is_real_dir(path):
                    # Crash between move-aside and rename: put the old checkpoint back.
                    try:
                        os.rename(path, self.layout.epoch_dir(epoch))
                    except OSError as err:
                        self.log(f"could not restore {display_path(path)} moved aside by a "
                                 f"crash: {printable(err)}")
                        continue
                    self.log(f"restored {display_path(self.layout.epoch_dir(epoch))} moved "
                             "aside by a crash")
                    continue
            self.log(f"removing leftover {display_path(path)}")
            self._try_remove(path)
        for name in ("last", "best"):
            for tmp in self.layout.base.glob(f".{name}.tmp-*"):
                self._try_remove(tmp)
        if _is_real_dir(self.layout.epochs_dir):
            try:
                fsync_dir(self.layout.epochs_dir)
            except OSError as err:
                self.log(f"fsync of {display_path(self.layout.epochs_dir)} failed: "
                         f"{printable(err)}")

    def _try_remove(self, path: Path) -> None:
        try:
            _rmtree(path)
        except OSError as err:
            self.log(f"could not remove {display_path(path)}: {printable(err)}; it is "
                     "retried by the next engine on this directory")

    def purge_deletions(self, background: bool = False) -> list[CheckpointDeleteError]:
        """Retry removing checkpoints the keep policy unlisted but could not remove.

        ``.deleting-*`` entries in ``epochs/`` are no longer checkpoints (restart never
        sees them); this only frees their space. Returns what still failed (never raises).
        With ``background`` they are handed to :attr:`remover` (what it fails on is
        reported by its ``wait()``), except those it has already.
        """
        failed: list[CheckpointDeleteError] = []
        if not background:
            self.remover.wait()  # never two removals of one directory at once
        for path in self.layout.leftovers():
            if not path.name.startswith(_DELETING_PREFIX):
                continue
            what = f"removing {display_path(path)} (a checkpoint already unlisted) failed"
            if background:
                self.remover.submit(path, what)
                continue
            try:
                _rmtree(path)
            except OSError as err:
                failed.append(_delete_error(err, what, path))
        return failed

    def new_work(self) -> Path:
        work = self.layout.work
        if os.path.lexists(work):
            _rmtree(work)
        self.layout.epochs_dir.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        fsync_dir(self.layout.base)
        _step("work-created")
        return work

    def write_info(self, path: Path, info: dict[str, Any]) -> None:
        write_json_durable(path, info)
        _step("info-written")

    def publish(self, epoch: int, work: Path, batch: int = 0) -> Path:
        """Rename work/ to epochs/NNN (or NNN+BBBBBB), moving an existing one aside first."""
        target = self.layout.epoch_dir(epoch, batch)
        aside: Path | None = None
        if os.path.lexists(target):
            self._unpoint_redone(epoch, batch)
            aside = self.layout.epochs_dir / f"{_ASIDE_PREFIX}{target.name}"
            if os.path.lexists(aside):
                _rmtree(aside)
            os.rename(target, aside)
            self.log(f"moved aside {display_path(target)} (epoch {epoch} is being re-done)")
            _step("aside-moved")
        os.rename(work, target)
        _step("renamed")
        fsync_dir(self.layout.epochs_dir)
        _step("epochs-synced")
        if aside is not None:
            # The new checkpoint is in place: failing to free the old one's space is not a
            # failed save. recover() (next engine) removes the aside.
            try:
                _rmtree(aside)
            except OSError as err:
                self.log(f"could not remove {display_path(aside)}: {printable(err)}; the "
                         "next engine on this directory retries")
            _step("aside-deleted")
        return target

    def _unpoint_redone(self, epoch: int, batch: int = 0) -> None:
        """``last`` must never point at a directory being moved aside."""
        key = CkptKey(epoch, batch)
        for name in ("last", "best"):
            p = self.layout.read_pointer(name)
            if p.key != key:
                continue
            if name == "best":
                self.remove_pointer("best")
                continue
            older = [k for k in self.layout.complete_keys() if k < key]
            if older:
                self.point("last", older[-1].epoch, older[-1].batch)
                self.log(f"re-pointed last at {older[-1].name} while {key.name} is re-done")
            else:
                self.remove_pointer("last")
                self.log(f"removed last (pointed at epoch {epoch}, which is being re-done)")

    def point(self, name: str, epoch: int, batch: int = 0) -> None:
        """Atomically point ``last``/``best`` at epochs/NNN with a relative link."""
        base = self.layout.base
        rel = self.layout.pointer_text(epoch, batch)
        tmp = base / f".{name}.tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            tmp.unlink()
        try:
            os.symlink(rel, tmp)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # Filesystems without symlinks: a small text file holding the same path.
            with os.fdopen(create_exclusive(tmp), "w", encoding="utf-8") as f:
                f.write(rel + "\n")
                f.flush()
                os.fsync(f.fileno())
        existing = base / name
        if _is_real_dir(existing):
            os.unlink(tmp)
            raise CheckpointWriteError(
                errno.EISDIR,
                f"{display_path(existing)} is a plain directory where a link belongs; move "
                "it away (candle-ckpt will not delete it)",
                str(existing),
            )
        os.replace(tmp, existing)
        # The link is in place (for last, the commit point): a failing directory fsync
        # must not turn a committed save into a failed one. Durability is then the
        # filesystem's; say so.
        try:
            fsync_dir(base)
        except OSError as err:
            self.log(f"{name} -> {rel} is in place, but fsync of {display_path(base)} "
                     f"failed: {printable(err)}")
        _step(f"{name}-linked")

    def remove_pointer(self, name: str) -> None:
        path = self.layout.base / name
        if os.path.lexists(path) and not _is_real_dir(path):
            path.unlink()
            fsync_dir(self.layout.base)

    def delete_epoch(self, epoch: int, batch: int = 0, background: bool = False) -> None:
        """Delete a checkpoint: rename first so a crash never leaves half of one listed.

        With ``background`` the renamed directory's files are removed by
        :attr:`remover`'s thread (freeing a GB-sized file takes a quarter of a second
        on ext4): the checkpoint is unlisted when this returns, its space is free once
        ``remover.wait()`` returns (each save waits for it before writing).

        Raises:
            CheckpointDeleteError: the rename failed (EBUSY, EPERM, EACCES, ``chattr +i``:
                the checkpoint stays listed and intact), or it was unlisted but its
                files could not all be removed (ENOTEMPTY from NFS ``.nfs*`` files of
                open descriptors ...: :meth:`purge_deletions` retries). Only ever called
                after the commit point: the caller logs it and carries on.
        """
        target = self.layout.epoch_dir(epoch, batch)
        if not os.path.lexists(target):
            return
        # A unique name: a stuck earlier deletion of the same epoch must not block this one.
        doomed = self.layout.epochs_dir / (
            f"{_DELETING_PREFIX}{target.name}.{os.getpid()}.{next(_deletions)}")
        try:
            os.rename(target, doomed)
        except OSError as err:
            raise _delete_error(err, f"keep policy: deleting epoch {epoch} failed; "
                                f"{display_path(target)} stays in place (still a valid "
                                "checkpoint)", target) from err
        try:
            fsync_dir(self.layout.epochs_dir)
        except OSError as err:
            self.log(f"fsync of {display_path(self.layout.epochs_dir)} failed: "
                     f"{printable(err)}")
        _step("epoch-unlisted")
        if background:
            self.remover.submit(doomed, f"keep policy: epoch {epoch} is unlisted (renamed to "
                                f"{display_path(doomed)}) but not all of it could be removed")
            return
        try:
            _rmtree(doomed)
        except OSError as err:
            raise _delete_error(err, f"keep policy: epoch {epoch} is unlisted (renamed to "
                                f"{display_path(doomed)}) but not all of it could be "
                                "removed; purge_deletions() retries", doomed) from err
        _step("epoch-deleted")


_deletions = itertools.count(1)
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
        self._todo: list[tuple[Path, str]] = []
        self._queued: set[Path] = set()  # in _todo, or being removed now
        self._failed: list[CheckpointDeleteError] = []
        self._thread: threading.Thread | None = None

    def submit(self, path: Path, what: str) -> None:
        """Remove ``path`` (a file or a tree, links not followed), unless it is queued."""
        with self._lock:
            if path in self._queued:
                return
            self._queued.add(path)
            self._todo.append((path, what))
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
                path, what = self._todo.pop(0)
            failure: CheckpointDeleteError | None = None
            try:
                _rmtree(path)
                _step("epoch-deleted")
            except FileNotFoundError:
                pass  # gone already (removed by hand, or by a retry)
            except OSError as err:
                failure = _delete_error(err, f"{what}; purge_deletions() retries", path)
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


def _delete_error(err: OSError, what: str, path: Path) -> CheckpointDeleteError:
    where = err.filename if err.filename is not None else os.fspath(path)
    return CheckpointDeleteError(
        err.errno or 0,
        f"{what}: {err.strerror or err} ({printable(where)})",
        where,
    )


def _is_real_dir(path: Path) -> bool:
    """A directory itself, not a link to one (never raises)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _rmtree(path: Path) -> None:
    """Remove a file, a link (not its target) or a directory tree (links not followed)."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
    else:
        shutil.rmtree(path)
