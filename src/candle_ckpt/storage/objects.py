"""Content-addressed objects shared by the checkpoints of one directory (``ckpt_dedup``).

With ``ckpt_dedup`` on, a backend writes each large array (a torch tensor, a Keras
variable) as an *object*: an immutable file of ``ckpts/objects/<2 hex>/<32 hex>`` whose
name is the xxh3-128 hash of its whole content, a small header (dtype, shape, byte
order) and the array's bytes. A save writes only the objects the tree does not hold
yet; every checkpoint's ``ckpt-info.json`` lists the objects it references
(``"objects": {name: {"size": n}}``), so a frozen layer is stored once for every epoch
kept.

The invariants (the on-disk contract, DESIGN §11):

- an object is written under a temporary name, fsynced, renamed to its name and its
  directory fsynced before the ``ckpt-info.json`` that names it is written, so a
  committed checkpoint never references a missing or partial object;
- an object is never changed: one found damaged (wrong size) is replaced, atomically,
  by a good copy of the same content, which heals every checkpoint that names it;
- :func:`collect` deletes only the objects that no checkpoint directory left in
  ``epochs/`` (committed or not, ``work/`` included) references, and only when every
  ``ckpt-info.json`` there could be read; a crash part-way leaves unreferenced objects
  that the next collection removes. It runs on the remover's thread after a save's
  deletions and in ``candle-ckpt prune``, never while a save writes objects (a save
  waits for the remover first), and only by the holder of the writer lock;
- names inside the tree are relative, so the whole tree moves with ``cp -a``/``rsync -a``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import stat
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from .fsio import fsync_dir, step
from .layout import _DELETING_PREFIX, INFO_FILE, Layout, is_real_dir, read_info_file
from .safeio import create_exclusive, describe_mode, open_regular, printable

OBJECTS_DIR = "objects"
ALGORITHM = "xxh3_128"
MAGIC = b"CKPTOBJ1"
_ALIGN = 64  # the data starts on a 64-byte boundary (memory-mapped arrays are aligned)
_NAME_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
_TMP_PREFIX = ".tmp-"
_MAX_HEADER = 1 << 16
MIN_OBJECT_BYTES = 64 << 10  # smaller arrays stay in the checkpoint's own file
_CHUNK = 8 << 20


def objects_dir_of(checkpoint: Path) -> Path:
    """The object store of a checkpoint directory ``<ckpts>/epochs/NNN``: ``<ckpts>/objects``."""
    return checkpoint.parent.parent / OBJECTS_DIR


def object_path(objects: Path, name: str) -> Path:
    return objects / name[:2] / name


def is_object_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


# ------------------------------------------------------------------------------ format
def encode_header(dtype: str, shape: Sequence[int]) -> bytes:
    """The bytes an object starts with: magic, header length, JSON header, padding."""
    meta = json.dumps({"dtype": dtype, "shape": [int(n) for n in shape],
                       "byteorder": sys.byteorder}, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<I", len(meta)) + meta
    return head + b"\0" * (-len(head) % _ALIGN)


@dataclass(frozen=True)
class Header:
    dtype: str
    shape: tuple[int, ...]
    offset: int  # where the data starts


def parse_header(data: bytes) -> Header:
    """Decode an object's header (``data``: at least its first bytes). ValueError if bad."""
    if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
        raise ValueError("not a candle-ckpt object (bad magic)")
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if length > _MAX_HEADER or start + length > len(data):
        raise ValueError(f"object header length {length} is out of range")
    try:
        meta = json.loads(data[start:start + length].decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"object header is not JSON: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("dtype"), str) \
            or not isinstance(meta.get("shape"), list) \
            or not all(type(n) is int and n >= 0 for n in meta["shape"]):
        raise ValueError(f"object header {printable(meta, 200)} is not dtype/shape")
    if meta.get("byteorder") != sys.byteorder:
        raise ValueError(f"object is {printable(meta.get('byteorder'))}-endian, this machine "
                         f"is {sys.byteorder}-endian")
    offset = start + length
    offset += -offset % _ALIGN
    return Header(meta["dtype"], tuple(meta["shape"]), offset)


def read_header(fd: int) -> Header:
    return parse_header(os.pread(fd, _MAX_HEADER + 64, 0))


def hash_fd(fd: int) -> str:
    """The object name a file's content should have (the file is read once)."""
    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    offset = 0
    while True:
        n = os.preadv(fd, [buf], offset)
        if not n:
            break
        h.update(memoryview(buf)[:n])
        offset += n
    return h.hexdigest()


# ------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class Array:
    """An array to store: its dtype's name, shape, and bytes (C order, native byte order)."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview


class ObjectStore:
    """The object store of one layout, as the writer uses it.

    ``verify_reused``: before an existing object is referenced by a new checkpoint, its
    content is hashed once per store (per engine) to be sure it still is what its name
    says (``ckpt_checksum``); one that is not is replaced by the good copy at hand.
    """

    def __init__(self, directory: Path, verify_reused: bool = False) -> None:
        self.directory = directory
        self.verify_reused = verify_reused
        self._verified: set[str] = set()
        self.written_bytes = 0  # by put() calls so far: what the store really wrote

    def put(self, arrays: Sequence[Array]) -> list[tuple[str, int]]:
        """Store ``arrays``; their (name, size) in order. Objects are durable on return.

        The arrays are hashed on a thread of their own, ahead of the writing (xxh3
        releases the GIL), so a save of mostly unchanged state costs about one pass of
        hashing, and a save of changed state about the writing alone.

        Raises:
            OSError: an object could not be written (ENOSPC, EIO ...): nothing written
                so far is referenced by any checkpoint; the next collection removes it.
        """
        headers = [encode_header(a.dtype, a.shape) for a in arrays]
        names = _Hasher(headers, arrays)
        syncer = _Syncer()
        ready: set[Path] = set()
        out: list[tuple[str, int]] = []
        written: list[tuple[Path, Path]] = []
        pending: set[Path] = set()
        try:
            for i, array in enumerate(arrays):
                name = names.get(i)
                size = len(headers[i]) + array.data.nbytes
                out.append((name, size))
                final = object_path(self.directory, name)
                if final.parent not in ready:
                    _real_dir(self.directory)
                    _real_dir(final.parent)
                    ready.add(final.parent)
                if final in pending or self._usable(final, size, name):
                    continue
                tmp = final.parent / f"{_TMP_PREFIX}{name}.{os.getpid()}"
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                fd = create_exclusive(tmp)
                try:
                    with os.fdopen(os.dup(fd), "wb", buffering=0) as f:
                        f.write(headers[i])
                        f.write(array.data)
                except BaseException:
                    os.close(fd)
                    _unlink_quietly(tmp)
                    raise
                # Flushed to the disk while the next one is written; the fd is closed there.
                syncer.submit(fd, "object-written")
                self.written_bytes += size
                written.append((tmp, final))
                pending.add(final)
            syncer.wait()  # every object's bytes are durable (or an error is raised)
        finally:
            names.stop()
            syncer.stop()
        self._publish(written)
        return out

    def _usable(self, final: Path, size: int, name: str) -> bool:
        """Is the object already there, a regular file of its size (and content)?"""
        try:
            st = os.stat(final, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False  # damaged: replaced by the good copy we hold
        if not self.verify_reused or name in self._verified:
            return True
        fd = open_regular(final, os.O_RDONLY, role="an object")
        try:
            good = hash_fd(fd) == name
        finally:
            os.close(fd)
        if good:
            self._verified.add(name)
        return good

    def _publish(self, written: list[tuple[Path, Path]]) -> None:
        """Rename every new (fsynced) object to its name, then fsync the directories."""
        parents = set()
        for tmp, final in written:
            os.replace(tmp, final)
            parents.add(final.parent)
            self._verified.add(final.name)
        if not written:
            return
        syncer = _Syncer()
        try:
            for parent in sorted(parents) + [self.directory, self.directory.parent]:
                syncer.submit_dir(parent)
            syncer.wait()
        finally:
            syncer.stop()
        step("objects-synced")


class _Syncer:
    """fsyncs on a few threads of their own: the filesystem flushes several files (and
    commits its journal) at once, and the writer goes on writing meanwhile.

    Where no thread can be started (interpreter exit), it fsyncs inline.
    """

    THREADS = 4

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue[tuple[int | Path, str | None] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._left = 0
        self._done = threading.Condition(self._lock)
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    def _start(self) -> bool:
        if len(self._threads) >= self.THREADS:
            return True
        try:
            thread = threading.Thread(target=self._run, name="candle-ckpt-fsync", daemon=True)
            thread.start()
        except RuntimeError:  # interpreter exit
            return bool(self._threads)
        self._threads.append(thread)
        return True

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            self._do(*item)

    def _do(self, what: int | Path, name: str | None) -> None:
        error: BaseException | None = None
        try:
            if isinstance(what, Path):
                fsync_dir(what)
            else:
                try:
                    os.fsync(what)
                finally:
                    os.close(what)
                if name is not None:
                    step(name)
        except BaseException as err:  # raised by wait(), on the writer's thread
            error = err
        with self._done:
            self._left -= 1
            if error is not None and self._error is None:
                self._error = error
            self._done.notify_all()

    def _submit(self, item: tuple[int | Path, str | None]) -> None:
        with self._lock:
            self._left += 1
        if self._start():
            self._todo.put(item)
        else:
            self._do(*item)

    def submit(self, fd: int, step_name: str) -> None:
        """fsync and close ``fd`` (then report the step ``step_name``)."""
        self._submit((fd, step_name))

    def submit_dir(self, path: Path) -> None:
        self._submit((path, None))

    def wait(self) -> None:
        with self._done:
            while self._left:
                self._done.wait()
            if self._error is not None:
                raise self._error

    def stop(self) -> None:
        try:
            self.wait()  # no descriptor is left open
        except BaseException:  # noqa: BLE001 - already raised (or being raised) by put
            pass
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join()


class _Hasher:
    """Names the arrays in order on a thread of its own, ahead of the writer."""

    def __init__(self, headers: list[bytes], arrays: Sequence[Array]) -> None:
        self._headers = headers
        self._arrays = arrays
        self._names: list[str | None] = [None] * len(arrays)
        self._error: BaseException | None = None
        self._ready = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        if len(arrays) > 1:
            try:
                self._thread = threading.Thread(target=self._run, name="candle-ckpt-hash",
                                                daemon=True)
                self._thread.start()
            except RuntimeError:  # interpreter exit: no new threads; hash inline
                self._thread = None

    def _name(self, i: int) -> str:
        h = xxhash.xxh3_128(self._headers[i])
        h.update(self._arrays[i].data)
        return h.hexdigest()

    def _run(self) -> None:
        for i in range(len(self._arrays)):
            if self._stopped:
                return
            try:
                name = self._name(i)
            except BaseException as err:
                with self._ready:
                    self._error = err
                    self._ready.notify_all()
                return
            with self._ready:
                self._names[i] = name
                self._ready.notify_all()

    def get(self, i: int) -> str:
        if self._thread is None:
            return self._name(i)
        with self._ready:
            while self._names[i] is None and self._error is None:
                self._ready.wait()
            if self._names[i] is None:
                assert self._error is not None
                raise self._error
            return self._names[i]  # type: ignore[return-value]

    def stop(self) -> None:
        self._stopped = True
        if self._thread is not None:
            self._thread.join()


def _real_dir(path: Path) -> None:
    """Make ``path`` a real directory of the store: a link or file found in its place
    (damage, or planted) is removed, never followed; its objects were never trusted."""
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
        return
    if stat.S_ISDIR(mode):
        return
    os.unlink(path)
    path.mkdir()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ------------------------------------------------------------------------------ checking
def check_objects(checkpoint: Path, objects: Any, check_checksums: bool) -> list[str]:
    """Problems with the objects a checkpoint's ``ckpt-info.json`` references. Never raises.

    Each must be a regular file (no link followed) at its place in the store of the
    checkpoint's tree, of the size recorded; with ``check_checksums``, its content must
    hash to its name.
    """
    if not isinstance(objects, dict):
        return [f"'objects' is a {type(objects).__name__}, expected an object"]
    store = objects_dir_of(checkpoint)
    problems: list[str] = []
    for where in (store.parent, store):
        try:
            mode = os.stat(where, follow_symlinks=False).st_mode
        except OSError as err:
            return [f"the object store {printable(os.fspath(where))}: "
                    f"{printable(err.strerror or err)}"] if objects else []
        if not stat.S_ISDIR(mode):
            return [f"the object store {printable(os.fspath(where))} is "
                    f"{describe_mode(mode)}, not a directory (links are never followed)"]
    for name, entry in sorted(objects.items()):
        what = f"object {printable(name, 80)}"
        if not is_object_name(name):
            problems.append(f"{what}: not an object name")
            continue
        if not isinstance(entry, dict) or type(entry.get("size")) is not int:
            problems.append(f"{what}: bad entry {printable(entry, 200)}")
            continue
        shard = store / name[:2]
        try:
            if not stat.S_ISDIR(os.stat(shard, follow_symlinks=False).st_mode):
                problems.append(f"{what}: {printable(os.fspath(shard))} is not a directory")
                continue
            st = os.stat(shard / name, follow_symlinks=False)
        except FileNotFoundError:
            problems.append(f"{what}: missing")
            continue
        except OSError as err:
            problems.append(f"{what}: cannot be looked at: {printable(err.strerror or err)}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{what}: is {describe_mode(st.st_mode)}, not a regular file")
            continue
        if st.st_size != entry["size"]:
            problems.append(f"{what}: size {st.st_size} != {entry['size']} recorded")
            continue
        if check_checksums:
            try:
                fd = open_regular(shard / name, os.O_RDONLY, role="an object")
                try:
                    got = hash_fd(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                problems.append(f"{what}: cannot be read: {printable(err.strerror or err)}")
                continue
            if got != name:
                problems.append(f"{what}: content hashes to {got} ({ALGORITHM})")
    return problems


def open_object(checkpoint: Path, name: str, size: int) -> tuple[int, Header]:
    """Open a referenced object for reading: (descriptor, header), size checked.

    Raises:
        ValueError: not an object name, wrong size or a bad header (damage).
        OSError: missing, a link, not a regular file.
    """
    if not is_object_name(name):
        raise ValueError(f"{printable(name, 80)!r} is not an object name")
    store = objects_dir_of(checkpoint)
    for where in (store, store / name[:2]):
        if not is_real_dir(where):
            raise ValueError(f"{printable(os.fspath(where))} is not a directory")
    fd = open_regular(object_path(store, name), os.O_RDONLY, role="an object")
    try:
        got = os.fstat(fd).st_size
        if got != size:
            raise ValueError(f"object {name}: size {got} != {size} recorded")
        return fd, read_header(fd)
    except BaseException:
        os.close(fd)
        raise


# ------------------------------------------------------------------------------ collecting
def references_by_checkpoint(layout: Layout) -> dict[str, set[str]] | str:
    """The objects each checkpoint directory in ``epochs/`` (and ``work/``) references,
    by directory name; or why that cannot be known (a ``ckpt-info.json`` that cannot be
    read: its objects might be any)."""
    return references_in(layout.base)


def references_in(base: Path) -> dict[str, set[str]] | str:
    """:func:`references_by_checkpoint` of the tree ``base`` (``<ckpt_directory>/ckpts``)."""
    out: dict[str, set[str]] = {}
    work = base / "work"
    dirs: list[Path] = [work] if is_real_dir(work) else []
    try:
        entries = list(os.scandir(base / "epochs"))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.name.startswith(_DELETING_PREFIX):
            continue  # no longer a checkpoint: what only it names is garbage
        if entry.is_dir(follow_symlinks=False):
            dirs.append(Path(entry.path))
    for directory in dirs:
        path = directory / INFO_FILE
        if not os.path.lexists(path):
            continue  # incomplete: it references nothing yet
        try:
            info = read_info_file(path)
        except (OSError, ValueError) as err:
            return f"{printable(os.fspath(path))} cannot be read ({printable(err)})"
        named = info.get("objects", {})
        if not isinstance(named, dict):
            return f"{printable(os.fspath(path))}: 'objects' is not an object"
        out[directory.name] = set(named)
    return out


def referenced(layout: Layout) -> set[str] | str:
    """Every object a checkpoint directory references (see
    :func:`references_by_checkpoint`), or why that cannot be known."""
    refs = references_by_checkpoint(layout)
    if isinstance(refs, str):
        return refs
    return set().union(*refs.values()) if refs else set()


def unshared(refs: dict[str, set[str]], some: set[str]) -> set[str]:
    """The objects referenced by the checkpoints ``some`` (directory names) and by no
    other: what deleting them all frees."""
    mine = set().union(*(refs[k] for k in some if k in refs)) if some else set()
    others = set().union(*(v for k, v in refs.items() if k not in some)) if refs else set()
    return mine - others


def own_bytes(refs: dict[str, set[str]], stored: dict[str, int]) -> dict[str, int]:
    """The bytes of objects each checkpoint alone references (what deleting just it
    frees), by directory name; ``stored``: :func:`sizes`."""
    count: dict[str, int] = {}
    for names in refs.values():
        for name in names:
            count[name] = count.get(name, 0) + 1
    return {key: sum(stored.get(n, 0) for n in names if count[n] == 1)
            for key, names in refs.items()}


def collect(layout: Layout) -> tuple[int, int, str | None]:
    """Delete the objects no checkpoint references: (objects, bytes) freed, and why
    nothing was collected (None when it ran). Links and temporary files left by a
    crash count as unreferenced; directories inside the store are left alone.

    Raises:
        OSError: an unreferenced object could not be deleted (the next collection retries).
    """
    store = layout.base / OBJECTS_DIR
    if not is_real_dir(store):
        return 0, 0, None
    keep = referenced(layout)
    if isinstance(keep, str):
        return 0, 0, keep
    count = freed = 0
    for shard in sorted(os.scandir(store), key=lambda e: e.name):
        if not shard.is_dir(follow_symlinks=False) or len(shard.name) != 2:
            continue
        for entry in sorted(os.scandir(shard.path), key=lambda e: e.name):
            if entry.name in keep and entry.name.startswith(shard.name):
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                continue
            os.unlink(entry.path)
            count += 1
            freed += st.st_size
            step("object-deleted")
    return count, freed, None


def named_by(checkpoint: Path) -> set[str]:
    """The objects a checkpoint directory's ``ckpt-info.json`` names (none if it names
    none or cannot be read)."""
    try:
        named = read_info_file(checkpoint / INFO_FILE).get("objects")
    except (OSError, ValueError):
        return set()
    return {n for n in named if is_object_name(n)} if isinstance(named, dict) else set()


def object_sizes(store: Path, names: set[str]) -> dict[str, int]:
    """The size of each of ``names`` in ``store`` (absent: not there, or not a regular
    file)."""
    out = {}
    for name in names:
        try:
            st = os.stat(object_path(store, name), follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out[name] = st.st_size
    return out


def sizes(layout: Layout) -> dict[str, int]:
    """The size of every object in the store, by name (for the disk-use accounting)."""
    store = layout.base / OBJECTS_DIR
    out: dict[str, int] = {}
    if not is_real_dir(store):
        return out
    for shard in os.scandir(store):
        if not shard.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(shard.path):
            if is_object_name(entry.name) and entry.is_file(follow_symlinks=False):
                out[entry.name] = entry.stat(follow_symlinks=False).st_size
    return out
