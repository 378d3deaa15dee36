"""Paths of a checkpoint directory, listing epochs, and reading the last/best pointers.

Two layouts exist on users' disks:

- ours (and the older CANDLE Keras module's): ``<root>/ckpts/{epochs,last,best,work}``;
- the newer original CANDLE code's: ``<root>/{epochs,last,best}``.

A :class:`Layout` names the directory that holds ``epochs/``, ``last`` and ``best``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INFO_FILE = "ckpt-info.json"
LOG_FILE = "ckpt.log"
LOCK_FILE = "ckpt.lock"
POINTERS = ("last", "best")
_EPOCH_RE = re.compile(r"^[0-9]+$")
_ASIDE_PREFIX = ".aside-"
_DELETING_PREFIX = ".deleting-"


def epoch_name(epoch: int) -> str:
    """Directory name of an epoch: %03d, wider past 999."""
    return f"{epoch:03d}"


def parse_epoch(name: str) -> int | None:
    return int(name) if _EPOCH_RE.match(name) else None


@dataclass(frozen=True)
class Pointer:
    """What a ``last`` or ``best`` entry holds.

    ``kind`` is "missing", "symlink", "file" (a text pointer), "directory" (a plain
    directory where a link belongs) or "other". ``epoch`` is set when the pointer names
    an existing ``epochs/NNN`` of this layout; otherwise ``problem`` says why not.
    """

    name: str
    path: Path
    kind: str
    raw: str | None = None
    epoch: int | None = None
    problem: str | None = None
    reanchored: bool = False

    @property
    def ok(self) -> bool:
        return self.epoch is not None and self.problem is None


@dataclass(frozen=True)
class Layout:
    """The place where ``epochs/``, ``last`` and ``best`` live under a ckpt_directory."""

    root: Path
    base: Path
    original: bool = False  # True for the newer original CANDLE layout (no ckpts/)

    @staticmethod
    def ours(root: Path) -> Layout:
        return Layout(root, root / "ckpts", False)

    @staticmethod
    def flat(root: Path) -> Layout:
        return Layout(root, root, True)

    @staticmethod
    def for_restart(root: Path) -> Layout | None:
        """The layout whose ``last`` restart reads: ours, else the original's, else None."""
        for layout in (Layout.ours(root), Layout.flat(root)):
            if os.path.lexists(layout.last):
                return layout
        return None

    @staticmethod
    def for_reading(root: Path) -> Layout:
        """The layout to list: the one with a ``last``, else with ``epochs/``, else ours."""
        found = Layout.for_restart(root)
        if found is not None:
            return found
        for layout in (Layout.ours(root), Layout.flat(root)):
            if layout.epochs_dir.is_dir():
                return layout
        return Layout.ours(root)

    @property
    def epochs_dir(self) -> Path:
        return self.base / "epochs"

    @property
    def last(self) -> Path:
        return self.base / "last"

    @property
    def best(self) -> Path:
        return self.base / "best"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def log_file(self) -> Path:
        return self.root / LOG_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    def epoch_dir(self, epoch: int) -> Path:
        return self.epochs_dir / epoch_name(epoch)

    def pointer_text(self, epoch: int) -> str:
        """The relative target written into ``last``/``best`` for an epoch."""
        return f"epochs/{epoch_name(epoch)}"

    def list_epochs(self) -> list[int]:
        """Every ``epochs/NNN`` directory, complete or not, ascending."""
        try:
            names = os.listdir(self.epochs_dir)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            n = parse_epoch(name)
            if n is not None and (self.epochs_dir / name).is_dir():
                found.append(n)
        return sorted(found)

    def is_complete(self, epoch: int) -> bool:
        """``ckpt-info.json`` is written last: its presence marks the checkpoint complete."""
        return (self.epoch_dir(epoch) / INFO_FILE).is_file()

    def complete_epochs(self) -> list[int]:
        return [e for e in self.list_epochs() if self.is_complete(e)]

    def leftovers(self) -> list[Path]:
        """Asides and half-deleted directories a crash may have left in ``epochs/``."""
        try:
            names = os.listdir(self.epochs_dir)
        except FileNotFoundError:
            return []
        return sorted(
            self.epochs_dir / n
            for n in names
            if n.startswith(_ASIDE_PREFIX) or n.startswith(_DELETING_PREFIX)
        )

    def read_pointer(self, name: str) -> Pointer:
        """Read ``last`` or ``best`` without following it outside this layout."""
        path = self.base / name
        if not os.path.lexists(path):
            return Pointer(name, path, "missing", problem="missing")
        if path.is_symlink():
            raw = os.readlink(path)
            return self._resolve(Pointer(name, path, "symlink", raw=raw))
        if path.is_dir():
            return Pointer(
                name, path, "directory", problem="is a plain directory, not a link to epochs/NNN"
            )
        if path.is_file():
            try:
                raw = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                return Pointer(name, path, "file", problem=f"unreadable pointer file: {err}")
            return self._resolve(Pointer(name, path, "file", raw=raw))
        return Pointer(name, path, "other", problem="is neither a link nor a pointer file")

    def _resolve(self, p: Pointer) -> Pointer:
        raw = p.raw or ""
        if not raw:
            return _with(p, problem="empty pointer")
        target = Path(os.path.normpath(self.base / raw))  # an absolute raw wins the join
        epoch = parse_epoch(target.name)
        in_tree = epoch is not None and _same_dir(target.parent, self.epochs_dir)
        if in_tree:
            assert epoch is not None
            if not self.epoch_dir(epoch).is_dir():
                return _with(p, epoch=None, problem=f"dangling: {raw} does not exist")
            return _with(p, epoch=epoch)
        # The original wrote absolute links; after the tree was moved they dangle. If
        # the name ends in epochs/NNN and that exists here, re-anchor to it.
        if (
            os.path.isabs(raw)
            and epoch is not None
            and target.parent.name == "epochs"
            and not os.path.exists(raw)
            and self.epoch_dir(epoch).is_dir()
        ):
            return _with(p, epoch=epoch, reanchored=True)
        if os.path.isabs(raw) and not os.path.exists(raw):
            return _with(p, problem=f"dangling: {raw} does not exist")
        return _with(
            p, problem=f"escapes the tree: {raw} is not inside {self.epochs_dir}"
        )

    def read_info(self, epoch: int) -> dict[str, Any]:
        """Parse an epoch's ``ckpt-info.json`` (raises OSError / ValueError)."""
        return read_info_file(self.epoch_dir(epoch) / INFO_FILE)


def _with(p: Pointer, **changes: Any) -> Pointer:
    values = {f: getattr(p, f) for f in ("name", "path", "kind", "raw", "epoch", "problem",
                                          "reanchored")}
    values.update(changes)
    return Pointer(**values)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def read_info_file(path: Path) -> dict[str, Any]:
    """Read a ``ckpt-info.json``; non-JSON or a non-object raises ValueError."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    data = json.loads(text)  # tolerant: the original wrote Infinity for an unset best
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class CheckpointSummary:
    """One row of a listing (used by restart diagnostics and the CLI)."""

    epoch: int
    path: Path
    complete: bool
    info: dict[str, Any] | None = None
    error: str | None = None
    markers: list[str] = field(default_factory=list)


def summarize(layout: Layout) -> list[CheckpointSummary]:
    """Every epoch directory with its parsed info and last/best markers."""
    last = layout.read_pointer("last")
    best = layout.read_pointer("best")
    rows = []
    for e in layout.list_epochs():
        row = CheckpointSummary(e, layout.epoch_dir(e), layout.is_complete(e))
        if row.complete:
            try:
                row.info = layout.read_info(e)
            except (OSError, ValueError) as err:
                row.error = f"unreadable {INFO_FILE}: {err}"
        if last.ok and last.epoch == e:
            row.markers.append("last")
        if best.ok and best.epoch == e:
            row.markers.append("best")
        rows.append(row)
    return rows
