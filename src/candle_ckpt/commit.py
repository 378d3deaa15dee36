"""The commit protocol: work dir, fsync, rename, atomic relative links, the writer lock.

A kill -9 between any two steps leaves a tree from which restart resumes from the
checkpoint ``last`` points to; ``last`` is moved only by ``os.replace``, so it is never
missing. Steps call :func:`_step` with their name so tests can crash exactly there.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointLockedError, CheckpointWriteError, CkptParamError
from .integrity import checksum_file, new_hasher, safe_member
from .layout import _ASIDE_PREFIX, _DELETING_PREFIX, INFO_FILE, Layout, parse_epoch

# Crash injection for tests: called with each step's name. Never set in production.
_on_step: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _on_step is not None:
        _on_step(name)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms that cannot open directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingWriter(io.RawIOBase):
    """A write-only stream that checksums and counts bytes on their way to the file."""

    def __init__(self, raw: BinaryIO, algorithm: str | None) -> None:
        super().__init__()
        self._raw = raw
        self._hasher = new_hasher(algorithm) if algorithm else None
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        if self._hasher is not None:
            self._hasher.update(view)
        self.size += len(view)
        return len(view)

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
    checksums on, read once after the backend returns).
    """

    def __init__(self, directory: Path, algorithm: str | None) -> None:
        self.directory = directory
        self.algorithm = algorithm
        self.files: dict[str, dict[str, Any]] = {}
        self._by_path: list[str] = []

    def _claim(self, name: str) -> Path:
        if not safe_member(name) or name == INFO_FILE:
            raise CkptParamError(
                f"checkpoint file name {name!r} is not accepted; use a relative name inside "
                f"the checkpoint other than {INFO_FILE!r}"
            )
        if name in self.files or name in self._by_path:
            raise CkptParamError(f"checkpoint file name {name!r} is written twice")
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def open(self, name: str) -> Iterator[_HashingWriter]:
        path = self._claim(name)
        with open(path, "wb", buffering=1 << 20) as raw:
            writer = _HashingWriter(raw, self.algorithm)
            yield writer
            raw.flush()
            os.fsync(raw.fileno())
        entry: dict[str, Any] = {"size": writer.size}
        if writer.checksum is not None:
            entry["checksum"] = writer.checksum
        self.files[name] = entry
        _step("file-written")

    def path(self, name: str) -> Path:
        path = self._claim(name)
        self._by_path.append(name)
        return path

    def finish(self) -> dict[str, dict[str, Any]]:
        """fsync the files written by path and add them to the manifest."""
        for name in self._by_path:
            path = self.directory / name
            if not path.is_file():
                raise CheckpointWriteError(
                    errno.ENOENT, f"the backend did not write {name!r}", str(path)
                )
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            entry: dict[str, Any] = {"size": path.stat().st_size}
            if self.algorithm:
                entry["checksum"] = checksum_file(path, self.algorithm)
            self.files[name] = entry
            _step("file-written")
        self._by_path.clear()
        for sub in {(self.directory / n).parent for n in self.files}:
            fsync_dir(sub)
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
    text = json.dumps(json_safe(data), indent=1, allow_nan=False, ensure_ascii=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


# ---------------------------------------------------------------------------------------
# The writer lock. flock is released by the kernel when the process dies, so a lock left
# by a killed run never blocks the next one. Engines of one process share the lock.

_locks: dict[str, list[Any]] = {}
_locks_guard = threading.Lock()


def acquire_lock(layout: Layout) -> tuple[str, bool]:
    """Take the writer lock of a checkpoint directory.

    Returns:
        The key to release it, and whether this process did not hold it before.
    """
    import fcntl

    layout.root.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(layout.lock_file)
    with _locks_guard:
        if key in _locks:
            _locks[key][1] += 1
            return key, False
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointLockedError(
                    f"checkpoint directory {str(layout.root)!r} is in use by another process "
                    f"({holder}); only one writer may use it at a time. Use another "
                    "ckpt_directory, or wait for that run to end."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
            0,
        )
        _locks[key] = [fd, 1]
        return key, True


def release_lock(key: str) -> None:
    with _locks_guard:
        held = _locks.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _locks[key]
            os.close(held[0])  # closing the descriptor drops the flock


# ---------------------------------------------------------------------------------------


class Committer:
    """Applies the commit protocol to one :class:`Layout` (always ours when writing)."""

    def __init__(self, layout: Layout, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.log = log

    def recover(self) -> None:
        """Clean what a crash may have left: a stale work/, asides, half-deleted dirs."""
        work = self.layout.work
        if os.path.lexists(work):
            self.log(f"removing stale work directory {work} left by an interrupted save")
            _rmtree(work)
        for path in self.layout.leftovers():
            name = path.name
            if name.startswith(_ASIDE_PREFIX):
                epoch = parse_epoch(name[len(_ASIDE_PREFIX):].split(".")[0])
                if epoch is not None and not os.path.lexists(self.layout.epoch_dir(epoch)):
                    # Crash between move-aside and rename: put the old checkpoint back.
                    os.rename(path, self.layout.epoch_dir(epoch))
                    self.log(f"restored {self.layout.epoch_dir(epoch)} moved aside by a crash")
                    continue
            self.log(f"removing leftover {path}")
            _rmtree(path)
        for name in ("last", "best"):
            for tmp in self.layout.base.glob(f".{name}.tmp-*"):
                tmp.unlink(missing_ok=True)
        if self.layout.epochs_dir.is_dir():
            fsync_dir(self.layout.epochs_dir)

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

    def publish(self, epoch: int, work: Path) -> Path:
        """Rename work/ to epochs/NNN, moving an existing epochs/NNN aside first."""
        target = self.layout.epoch_dir(epoch)
        aside: Path | None = None
        if os.path.lexists(target):
            self._unpoint_redone(epoch)
            aside = self.layout.epochs_dir / f"{_ASIDE_PREFIX}{target.name}"
            if os.path.lexists(aside):
                _rmtree(aside)
            os.rename(target, aside)
            self.log(f"moved aside {target} (epoch {epoch} is being re-done)")
            _step("aside-moved")
        os.rename(work, target)
        _step("renamed")
        fsync_dir(self.layout.epochs_dir)
        _step("epochs-synced")
        if aside is not None:
            _rmtree(aside)
            _step("aside-deleted")
        return target

    def _unpoint_redone(self, epoch: int) -> None:
        """``last`` must never point at a directory being moved aside."""
        for name in ("last", "best"):
            p = self.layout.read_pointer(name)
            if p.epoch != epoch:
                continue
            if name == "best":
                self.remove_pointer("best")
                continue
            older = [e for e in self.layout.complete_epochs() if e < epoch]
            if older:
                self.point("last", older[-1])
                self.log(f"re-pointed last at epoch {older[-1]} while epoch {epoch} is re-done")
            else:
                self.remove_pointer("last")
                self.log(f"removed last (pointed at epoch {epoch}, which is being re-done)")

    def point(self, name: str, epoch: int) -> None:
        """Atomically point ``last``/``best`` at epochs/NNN with a relative link."""
        base = self.layout.base
        rel = self.layout.pointer_text(epoch)
        tmp = base / f".{name}.tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            tmp.unlink()
        try:
            os.symlink(rel, tmp)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # Filesystems without symlinks: a small text file holding the same path.
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(rel + "\n")
                f.flush()
                os.fsync(f.fileno())
        existing = base / name
        if existing.is_dir() and not existing.is_symlink():
            raise CheckpointWriteError(
                errno.EISDIR,
                f"{existing} is a plain directory where a link belongs; move it away "
                "(candle-ckpt will not delete it)",
                str(existing),
            )
        os.replace(tmp, existing)
        fsync_dir(base)
        _step(f"{name}-linked")

    def remove_pointer(self, name: str) -> None:
        path = self.layout.base / name
        if os.path.lexists(path) and not (path.is_dir() and not path.is_symlink()):
            path.unlink()
            fsync_dir(self.layout.base)

    def delete_epoch(self, epoch: int) -> None:
        """Delete a checkpoint: rename first so a crash never leaves half of one listed."""
        target = self.layout.epoch_dir(epoch)
        if not os.path.lexists(target):
            return
        doomed = self.layout.epochs_dir / f"{_DELETING_PREFIX}{target.name}"
        if os.path.lexists(doomed):
            _rmtree(doomed)
        os.rename(target, doomed)
        fsync_dir(self.layout.epochs_dir)
        _step("epoch-unlisted")
        _rmtree(doomed)
        _step("epoch-deleted")


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=False)
