"""FileSink: the one way a backend writes a checkpoint's files, hashing while writing."""

from __future__ import annotations

import errno
import io
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import (
    CheckpointWriteError,
    CkptParamError,
)
from .fsio import fsync_dir, step
from .integrity import ChecksumTally, checksum_fd, new_hasher, safe_member
from .layout import (
    INFO_FILE,
)
from .objects import Array, ObjectStore
from .safeio import create_exclusive, display_path, open_regular, printable

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
                 tally: ChecksumTally | None = None, objects: ObjectStore | None = None
                 ) -> None:
        self.directory = directory
        self.algorithm = algorithm
        self.tally = tally
        self.files: dict[str, dict[str, Any]] = {}
        self._by_path: list[str] = []
        self.objects = objects  # ckpt_dedup: where put_objects stores arrays
        self.references: dict[str, dict[str, Any]] = {}  # the objects this checkpoint names

    def put_objects(self, arrays: Sequence[Array]) -> list[str]:
        """Store ``arrays`` as shared objects (``ckpt_dedup``); their names, in order.

        Only what the store does not hold yet is written; every object is durable when
        this returns, and is listed in the checkpoint's ``ckpt-info.json``.

        Raises:
            RuntimeError: the sink has no object store (``objects`` is None).
        """
        if self.objects is None:
            raise RuntimeError("put_objects: this checkpoint is written without ckpt_dedup")
        stored = self.objects.put(arrays)
        for name, size in stored:
            self.references[name] = {"size": size}
        return [name for name, _ in stored]

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
        step("file-written")

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
            step("file-written")
        self._by_path.clear()
        fsync_dir(self.directory)
        return dict(sorted(self.files.items()))
