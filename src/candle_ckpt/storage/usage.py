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

    With ``ckpt_dedup``, a checkpoint also holds the shared objects it references
    (``refs``, with their sizes in ``stored``): each counts in the size of every
    checkpoint that references it, in ``alone(k)`` only when no other checkpoint of the
    tree references it (``outside``: those referenced by checkpoints not measured), and
    once in ``of(keys)``.
    """

    def __init__(self, sizes: Mapping[K, int], refs: Mapping[K, set[str]] | None = None,
                 stored: Mapping[str, int] | None = None,
                 outside: set[str] | None = None) -> None:
        self.sizes = dict(sizes)
        self.refs = {k: set(v) for k, v in (refs or {}).items()}
        self.stored = dict(stored or {})
        self.outside = set(outside or ())
        self._users: dict[str, int] = {}
        for names in self.refs.values():
            for name in names:
                self._users[name] = self._users.get(name, 0) + 1

    @classmethod
    def measure(cls, directories: Mapping[K, Path]) -> Footprint[K]:
        """Measure each checkpoint directory (a key to its path), and the shared objects
        it references (``<ckpts>/objects``, beside its ``epochs/``)."""
        from . import objects  # (objects imports nothing of this module)

        sizes = {key: dir_size(path) for key, path in directories.items()}
        refs = {key: objects.named_by(path) for key, path in directories.items()}
        if not any(refs.values()):
            return cls(sizes)
        stored: dict[str, int] = {}
        outside: set[str] = set()
        by_base: dict[Path, set[str]] = {}
        for path in directories.values():
            by_base.setdefault(path.parent.parent, set()).add(path.name)
        for base, measured in by_base.items():
            names = set().union(*(refs[k] for k, p in directories.items()
                                  if p.parent.parent == base))
            stored.update(objects.object_sizes(base / objects.OBJECTS_DIR, names))
            others = objects.references_in(base)
            if isinstance(others, str):  # unknown: count every object as shared
                outside |= names
                continue
            for name, used in others.items():
                if name not in measured:
                    outside |= used
        return cls(sizes, refs, stored, outside)

    def _objects(self, names: Iterable[str]) -> int:
        return sum(self.stored.get(n, 0) for n in names)

    def size(self, key: K) -> int:
        return self.sizes.get(key, 0) + self._objects(self.refs.get(key, ()))

    def alone(self, key: K) -> int:
        own = {n for n in self.refs.get(key, ())
               if self._users.get(n) == 1 and n not in self.outside}
        return self.sizes.get(key, 0) + self._objects(own)

    def of(self, keys: Iterable[K]) -> int:
        chosen = set(keys)
        names: set[str] = set()
        for k in chosen:
            names |= self.refs.get(k, set())
        return sum(self.sizes.get(k, 0) for k in chosen) + self._objects(names)


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
