"""What checkpoints occupy on disk, and sizes as people read them."""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["Footprint", "dir_size", "human_size"]

K = TypeVar("K", bound=Hashable)


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class Footprint(Generic[K]):
    """What a set of checkpoints occupies on disk, each directory measured once.

    Keys name checkpoints (an epoch, a :class:`~candle_ckpt.storage.layout.CkptKey`).
    ``size(k)`` is what checkpoint ``k`` holds (every file it needs); ``alone(k)``, what
    deleting ``k`` alone would free; ``of(keys)``, what the checkpoints ``keys`` occupy
    together: what would be left after deleting all others.
    """

    def __init__(self, sizes: Mapping[K, int]) -> None:
        self.sizes = dict(sizes)

    @classmethod
    def measure(cls, directories: Mapping[K, Path]) -> Footprint[K]:
        """Measure each checkpoint directory (a key to its path)."""
        return cls({key: dir_size(path) for key, path in directories.items()})

    def size(self, key: K) -> int:
        return self.sizes.get(key, 0)

    def alone(self, key: K) -> int:
        return self.sizes.get(key, 0)

    def of(self, keys: Iterable[K]) -> int:
        return sum(self.sizes.get(k, 0) for k in set(keys))


def human_size(n: int) -> str:
    """``n`` bytes in the largest binary unit below 1024 of it: "1.5 GiB"."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
