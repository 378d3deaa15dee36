"""Checksums and the per-checkpoint files manifest; verification of a checkpoint."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import xxhash

from .layout import INFO_FILE, read_info_file

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


def new_hasher(algorithm: str) -> Hasher:
    try:
        return _ALGORITHMS[algorithm]()
    except KeyError:
        accepted = ", ".join(sorted(_ALGORITHMS))
        raise ValueError(
            f"checksum_algorithm: value {algorithm!r} is not known; accepted: {accepted}"
        ) from None


def checksum_file(path: str | os.PathLike[str], algorithm: str = DEFAULT_ALGORITHM) -> str:
    """Read a file once and return its checksum as a string."""
    h = new_hasher(algorithm)
    with open(path, "rb") as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def safe_member(name: str) -> bool:
    """A manifest entry must stay inside its checkpoint directory."""
    if not name or os.path.isabs(name) or "\\" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def verify_checkpoint(
    directory: Path, info: dict[str, Any], check_checksums: bool
) -> list[str]:
    """Problems found in a checkpoint directory (empty when it holds up).

    Sizes are always checked against the ``files`` manifest; checksums only when
    ``check_checksums``. Original CANDLE checkpoints have no manifest: their
    ``model_file`` must exist and be non-empty, and its decimal CRC32 must match.
    """
    problems: list[str] = []
    files = info.get("files")
    if isinstance(files, dict):
        algorithm = info.get("checksum_algorithm") or DEFAULT_ALGORITHM
        for name, entry in sorted(files.items()):
            if not safe_member(name) or not isinstance(entry, dict):
                problems.append(f"{name}: bad manifest entry")
                continue
            path = directory / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            if not path.is_file():
                problems.append(f"{name}: not a regular file")
                continue
            if size != entry.get("size"):
                problems.append(f"{name}: size {size} != {entry.get('size')} recorded")
                continue
            want = entry.get("checksum")
            if check_checksums and isinstance(want, str):
                try:
                    got = checksum_file(path, algorithm)
                except ValueError as err:
                    problems.append(f"{name}: {err}")
                    continue
                if got != want:
                    problems.append(f"{name}: checksum {got} != {want} recorded ({algorithm})")
        model_file = info.get("model_file")
        if isinstance(model_file, str) and model_file not in files:
            problems.append(f"{model_file}: model_file not listed in files")
        return problems
    if files is not None:
        return [f"'files' is a {type(files).__name__}, expected an object"]
    # Legacy (original CANDLE) checkpoint.
    model_file = info.get("model_file", "model.h5")
    if not isinstance(model_file, str) or not safe_member(model_file):
        return [f"model_file {model_file!r} is not a file name inside the checkpoint"]
    path = directory / model_file
    if not path.is_file():
        return [f"{model_file}: missing"]
    if path.stat().st_size == 0:
        return [f"{model_file}: empty"]
    want = info.get("checksum")
    if check_checksums and isinstance(want, str) and want != DISABLED:
        algorithm = info.get("checksum_algorithm") or LEGACY_ALGORITHM
        got = checksum_file(path, algorithm)
        if got != want:
            problems.append(f"{model_file}: checksum {got} != {want} recorded ({algorithm})")
    return problems


def check_checkpoint(
    directory: Path, epoch: int, check_checksums: bool
) -> tuple[dict[str, Any] | None, list[str]]:
    """Read and verify the checkpoint of ``epoch`` in ``directory``.

    Returns its ``ckpt-info.json`` (None when unreadable) and the problems found, each
    naming the file it concerns relative to ``directory`` (empty when it holds up).
    """
    try:
        info = read_info_file(directory / INFO_FILE)
    except FileNotFoundError:
        return None, [f"{INFO_FILE}: missing (incomplete checkpoint)"]
    except (OSError, ValueError) as err:
        return None, [f"{INFO_FILE}: cannot be read: {err}"]
    if info.get("epoch") != epoch:
        return info, [f"{INFO_FILE}: says epoch {info.get('epoch')!r}, its directory is {epoch}"]
    return info, verify_checkpoint(directory, info, check_checksums)


def has_checksums(info: dict[str, Any]) -> bool:
    """Did the writer record checksums for this checkpoint's files?"""
    files = info.get("files")
    if isinstance(files, dict) and files:
        return all(isinstance(f, dict) and "checksum" in f for f in files.values())
    return isinstance(info.get("checksum"), str) and info.get("checksum") != DISABLED
