"""Checksums and the per-checkpoint files manifest; verification of a checkpoint."""

from __future__ import annotations

import errno
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import xxhash

from ..errors import UnsafeFileError
from . import objects
from .layout import INFO_FILE, read_info_file
from .safeio import describe_mode, display_path, open_regular, printable

DEFAULT_ALGORITHM = "xxh3_64"
LEGACY_ALGORITHM = "crc32"  # the original CANDLE: zlib CRC32 of model.h5, decimal string
DISABLED = "__DISABLED__"
_CHUNK = 8 << 20


class Hasher(Protocol):
    def update(self, data: bytes | memoryview) -> None: ...
    def hexdigest(self) -> str: ...


class _Crc32:
    """zlib CRC32 with the original CANDLE's rendering (decimal string)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return str(self._value & 0xFFFFFFFF)


_ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "xxh3_64": xxhash.xxh3_64,
    "xxh3_128": xxhash.xxh3_128,
    "xxh64": xxhash.xxh64,
    "crc32": _Crc32,
}


@dataclass
class ChecksumTally:
    """What checksumming cost, for the log's ``checksummed:`` line.

    One tally per save or per verified checkpoint, added to by one thread at a time.
    """

    files: int = 0
    nbytes: int = 0
    seconds: float = 0.0

    def add(self, nbytes: int, seconds: float) -> None:
        self.nbytes += nbytes
        self.seconds += seconds

    @staticmethod
    def parallel(tallies: Iterable[ChecksumTally]) -> ChecksumTally:
        """The tallies of writers that ran side by side: their bytes, the longest time."""
        tallies = list(tallies)
        return ChecksumTally(sum(t.files for t in tallies), sum(t.nbytes for t in tallies),
                             max((t.seconds for t in tallies), default=0.0))


class _TimedHasher:
    """A hasher that adds the bytes it hashes, and the time it takes, to a tally."""

    def __init__(self, hasher: Hasher, tally: ChecksumTally) -> None:
        self._hasher = hasher
        self._tally = tally

    def update(self, data: bytes | memoryview) -> None:
        start = time.perf_counter()
        self._hasher.update(data)
        self._tally.add(memoryview(data).nbytes, time.perf_counter() - start)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def new_hasher(algorithm: str, tally: ChecksumTally | None = None) -> Hasher:
    """A new hasher; with ``tally``, one that counts itself and its hashing time there."""
    try:
        hasher = _ALGORITHMS[algorithm]()
    except KeyError:
        accepted = ", ".join(sorted(_ALGORITHMS))
        raise ValueError(
            f"checksum_algorithm: value {algorithm!r} is not known; accepted: {accepted}"
        ) from None
    if tally is None:
        return hasher
    tally.files += 1
    return _TimedHasher(hasher, tally)


def checksum_fd(fd: int, algorithm: str = DEFAULT_ALGORITHM,
                tally: ChecksumTally | None = None) -> str:
    """Checksum what an open descriptor holds, from its start (its offset is not moved).

    ``tally``: counts the file, its bytes and the time taken, reading included (as the
    original's ``checksummed:`` time did).
    """
    start = time.perf_counter()
    h = new_hasher(algorithm)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    offset = 0
    while True:
        n = os.preadv(fd, [buf], offset) if hasattr(os, "preadv") else _pread_into(
            fd, buf, offset)
        if not n:
            break
        h.update(view[:n])
        offset += n
    if tally is not None:
        tally.files += 1
        tally.add(offset, time.perf_counter() - start)
    return h.hexdigest()


def _pread_into(fd: int, buf: bytearray, offset: int) -> int:
    data = os.pread(fd, len(buf), offset)
    buf[: len(data)] = data
    return len(data)


def checksum_file(path: str | os.PathLike[str], algorithm: str = DEFAULT_ALGORITHM,
                  follow_symlinks: bool = True, tally: ChecksumTally | None = None) -> str:
    """Read a file once and return its checksum as a string.

    With ``follow_symlinks=False`` (how checkpoint files are read) a symlink is refused.
    Either way only a regular file is read: a FIFO or device raises UnsafeFileError
    instead of hanging.
    """
    if follow_symlinks:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(
                errno.EINVAL, f"{printable(os.fspath(path))} is {describe_mode(st.st_mode)}, "
                "not a regular file; only regular files are checksummed", os.fspath(path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the stat
            os.close(fd)
            raise UnsafeFileError(errno.EINVAL, f"{printable(os.fspath(path))} is not a "
                                  "regular file", os.fspath(path))
    else:
        fd = open_regular(path, os.O_RDONLY, role="a checkpoint file")
    try:
        return checksum_fd(fd, algorithm, tally)
    finally:
        os.close(fd)


_MAX_NAME_BYTES = 255


def safe_member(name: object) -> bool:
    """Is ``name`` a plain file name of a checkpoint directory?

    Checkpoints are flat: no absolute path, no ``..`` or ``.``, no separator (``/`` or
    ``\\``), no NUL or other control character, at most 255 bytes (a file name's limit).
    """
    if not isinstance(name, str) or name in ("", ".", ".."):
        return False
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return False
    if not name.isprintable():  # NUL, newlines, lone surrogates, bidi overrides
        return False
    try:
        return len(name.encode("utf-8")) <= _MAX_NAME_BYTES
    except UnicodeEncodeError:
        return False


def _is_size(value: object) -> bool:
    return type(value) is int and value >= 0  # not bool, not float, not None


def _is_epoch(value: object) -> bool:
    return type(value) is int and value >= 0


def _check_member(directory: Path, name: str, what: str) -> tuple[int | None, str | None]:
    """lstat one file of a checkpoint: (size, None) or (None, problem)."""
    try:
        st = os.stat(directory / name, follow_symlinks=False)
    except FileNotFoundError:
        return None, f"{printable(name)}: missing"
    except OSError as err:
        return None, f"{printable(name)}: cannot be looked at: {printable(err.strerror or err)}"
    if not stat.S_ISREG(st.st_mode):
        return None, (f"{printable(name)}: {what} is {describe_mode(st.st_mode)}, not a "
                      "regular file")
    return st.st_size, None


def _checksum_member(directory: Path, name: str, algorithm: str,
                     tally: ChecksumTally | None) -> tuple[str | None, str | None]:
    try:
        return checksum_file(directory / name, algorithm, follow_symlinks=False,
                             tally=tally), None
    except OSError as err:
        return None, f"{printable(name)}: cannot be read: {printable(err.strerror or err)}"


# Fields that name a file of the checkpoint (the backends' and the original's).
_FILE_FIELDS = ("model_file", "rng_file")


def verify_checkpoint(
    directory: Path, info: dict[str, Any], check_checksums: bool,
    tally: ChecksumTally | None = None,
) -> list[str]:
    """Problems found in a checkpoint directory (empty when it holds up). Never raises.

    Sizes are always checked against the ``files`` manifest; checksums only when
    ``check_checksums``. Every file must be a regular file directly inside ``directory``
    (no links are followed, no FIFO or device is opened). A checkpoint with a
    ``format_version`` must have a manifest; original CANDLE checkpoints have none:
    their ``model_file`` must exist and be non-empty, and its decimal CRC32 must match.
    ``tally``: what the checksums read, and how long it took.
    """
    try:
        return _verify(directory, info, check_checksums, tally)
    except Exception as err:  # noqa: BLE001 - a verdict, never a crash, on any tree
        return [f"verification failed: {type(err).__name__}: {printable(err)}"]


def _verify(directory: Path, info: dict[str, Any], check_checksums: bool,
            tally: ChecksumTally | None) -> list[str]:
    problems: list[str] = []
    files = info.get("files")
    legacy = "format_version" not in info and "files" not in info
    if not legacy:
        version = info.get("format_version")
        if "format_version" in info and not (type(version) is int and version >= 1):
            problems.append(f"format_version {printable(version)!r} is not an integer >= 1")
        if not isinstance(files, dict):
            what = "missing" if files is None else f"a {type(files).__name__}"
            return problems + [f"'files' (the manifest) is {what}, expected an object: a "
                               "checkpoint with a format_version always has one"]
        algorithm = info.get("checksum_algorithm") or DEFAULT_ALGORITHM
        if not isinstance(algorithm, str) or algorithm not in _ALGORITHMS:
            return problems + [f"checksum_algorithm {printable(algorithm)!r} is not known "
                               f"(accepted: {', '.join(sorted(_ALGORITHMS))})"]
        for name, entry in sorted(files.items()):
            if not safe_member(name) or name == INFO_FILE:
                problems.append(f"{printable(name)}: not a plain file name of the checkpoint")
                continue
            if not isinstance(entry, dict) or not _is_size(entry.get("size")):
                problems.append(f"{name}: bad manifest entry {printable(entry, 200)}")
                continue
            size, problem = _check_member(directory, name, "manifest entry")
            if problem is not None:
                problems.append(problem)
                continue
            if size != entry["size"]:
                problems.append(f"{name}: size {size} != {entry['size']} recorded")
                continue
            want = entry.get("checksum")
            if "checksum" in entry and not isinstance(want, str):
                problems.append(f"{name}: checksum {printable(want, 200)!r} is not a string")
                continue
            if check_checksums and isinstance(want, str):
                got, problem = _checksum_member(directory, name, algorithm, tally)
                if problem is not None:
                    problems.append(problem)
                elif got != want:
                    problems.append(f"{name}: checksum {got} != {printable(want, 200)} "
                                    f"recorded ({algorithm})")
        model_file = info.get("model_file")
        if not isinstance(model_file, str):
            problems.append(f"model_file {printable(model_file, 200)!r} is not a file name")
        for field in _FILE_FIELDS:
            value = info.get(field)
            if value is None and field != "model_file":
                continue
            if isinstance(value, str) and value not in files:
                problems.append(f"{printable(value)}: {field} not listed in files")
            elif not isinstance(value, str) and field != "model_file":
                problems.append(f"{field} {printable(value, 200)!r} is not a file name")
        if "objects" in info:  # ckpt_dedup: the shared objects it references
            algorithm = info.get("objects_algorithm")
            if algorithm != objects.ALGORITHM:
                problems.append(f"objects_algorithm {printable(algorithm, 200)!r} is not "
                                f"{objects.ALGORITHM!r}")
            else:
                problems.extend(objects.check_objects(directory, info["objects"],
                                                      check_checksums))
        return problems
    # Legacy (original CANDLE) checkpoint.
    model_file = info.get("model_file", "model.h5")
    if not safe_member(model_file) or model_file == INFO_FILE:
        return [f"model_file {printable(model_file, 200)!r} is not a file name inside the "
                "checkpoint"]
    size, problem = _check_member(directory, model_file, "model_file")
    if problem is not None:
        return [problem]
    if size == 0:
        return [f"{model_file}: empty"]
    want = info.get("checksum")
    if check_checksums and isinstance(want, str) and want != DISABLED:
        algorithm = info.get("checksum_algorithm") or LEGACY_ALGORITHM
        if not isinstance(algorithm, str) or algorithm not in _ALGORITHMS:
            return [f"checksum_algorithm {printable(algorithm)!r} is not known"]
        got, problem = _checksum_member(directory, model_file, algorithm, tally)
        if problem is not None:
            return [problem]
        if got != want:
            problems.append(f"{model_file}: checksum {got} != {printable(want, 200)} recorded "
                            f"({algorithm})")
    return problems


def _check_fields(info: dict[str, Any]) -> list[str]:
    """Fields restart relies on must have their type (a float epoch is not an epoch)."""
    problems = []
    for name in ("best_metric_last", "metric_value"):
        value = info.get(name)
        if value is None or type(value) is float:
            continue
        if type(value) is int:
            try:
                float(value)
                continue
            except OverflowError:
                pass
        problems.append(f"{INFO_FILE}: {name} {printable(value, 200)!r} is not a number")
    epoch_best = info.get("epoch_best")
    if epoch_best is not None and not _is_epoch(epoch_best):
        problems.append(f"{INFO_FILE}: epoch_best {printable(epoch_best, 200)!r} is not an "
                        "epoch number")
    checksum = info.get("checksum")
    if checksum is not None and not isinstance(checksum, str):
        problems.append(f"{INFO_FILE}: checksum {printable(checksum, 200)!r} is not a string")
    return problems


def check_checkpoint(
    directory: Path, epoch: int, check_checksums: bool, tally: ChecksumTally | None = None
) -> tuple[dict[str, Any] | None, list[str]]:
    """Read and verify the checkpoint of ``epoch`` in ``directory``. Never raises.

    Returns its ``ckpt-info.json`` (None when unreadable) and the problems found, each
    naming the file it concerns relative to ``directory`` (empty when it holds up). The
    directory must be a real directory (an ``epochs/NNN`` symlink is not a checkpoint)
    and the info's ``epoch`` an integer equal to ``epoch``. ``tally``: what the checksums
    read, and how long it took.
    """
    try:
        st = os.stat(directory, follow_symlinks=False)
    except FileNotFoundError:
        return None, [f"{display_path(directory)}: missing"]
    except OSError as err:
        return None, [f"{display_path(directory)}: cannot be looked at: "
                      f"{printable(err.strerror or err)}"]
    if not stat.S_ISDIR(st.st_mode):
        return None, [f"{display_path(directory)}: is {describe_mode(st.st_mode)}, not a "
                      "checkpoint directory (links are never followed)"]
    try:
        info = read_info_file(directory / INFO_FILE)
    except FileNotFoundError:
        return None, [f"{INFO_FILE}: missing (incomplete checkpoint)"]
    except (OSError, ValueError) as err:
        return None, [f"{INFO_FILE}: cannot be read: {printable(err)}"]
    except Exception as err:  # noqa: BLE001 - read_info_file should not; never crash
        return None, [f"{INFO_FILE}: cannot be read: {type(err).__name__}: {printable(err)}"]
    found = info.get("epoch")
    if not (type(found) is int and found == epoch):
        return info, [f"{INFO_FILE}: says epoch {printable(found, 200)!r}, its directory is "
                      f"{epoch}"]
    problems = _check_fields(info)
    return info, problems + verify_checkpoint(directory, info, check_checksums, tally)


def has_checksums(info: dict[str, Any]) -> bool:
    """Did the writer record checksums for this checkpoint's files?"""
    files = info.get("files")
    if isinstance(files, dict) and files:
        return all(isinstance(f, dict) and "checksum" in f for f in files.values())
    return isinstance(info.get("checksum"), str) and info.get("checksum") != DISABLED
