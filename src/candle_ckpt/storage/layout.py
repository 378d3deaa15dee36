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
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INFO_FILE = "ckpt-info.json"
LOG_FILE = "ckpt.log"
LOCK_FILE = "ckpt.lock"
POINTERS = ("last", "best")
# How times are written everywhere: ckpt-info.json's "timestamp", ckpt.log's lines, the
# lock file's holder, and how ckpt_walltime_end is read.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_EPOCH_RE = re.compile(r"[0-9]+", re.ASCII)
MAX_INFO_BYTES = 64 << 20  # far above any real ckpt-info.json; bounds what a bad one costs
_MAX_POINTER_BYTES = 4096
_ASIDE_PREFIX = ".aside-"
_DELETING_PREFIX = ".deleting-"


def epoch_name(epoch: int) -> str:
    """Directory name of an epoch: %03d, wider past 999."""
    return f"{epoch:03d}"


def parse_epoch(name: str) -> int | None:
    """The epoch of a directory name written by :func:`epoch_name`, else None.

    Only the canonical spelling counts ("007", "1000"; not "7", "0007", "007\\n"):
    ``epoch_dir(parse_epoch(name))`` must be that very directory.
    """
    if not isinstance(name, str) or len(name) > 40 or not _EPOCH_RE.fullmatch(name):
        return None
    epoch = int(name)
    return epoch if epoch_name(epoch) == name else None


_PARTIAL_RE = re.compile(r"([0-9]+)\+([0-9]{6,})", re.ASCII)


@dataclass(frozen=True, order=True)
class CkptKey:
    """Which checkpoint: ``epoch`` completed epochs, plus ``batch`` batches of the next.

    ``batch`` is 0 for an epoch-end checkpoint (``epochs/NNN``); a mid-epoch one (saved
    on a pre-emption signal or a time-based save) is ``epochs/NNN+BBBBBB``, which sorts
    after epoch NNN's and before NNN+1's, and which no reader of complete epochs takes
    for one.
    """

    epoch: int
    batch: int = 0

    @property
    def partial(self) -> bool:
        return self.batch > 0

    @property
    def name(self) -> str:
        return epoch_name(self.epoch) + (f"+{self.batch:06d}" if self.batch else "")

    def __str__(self) -> str:
        return f"{self.epoch}+{self.batch}" if self.batch else str(self.epoch)


def parse_key(name: str) -> CkptKey | None:
    """The checkpoint a directory name under ``epochs/`` stands for, else None."""
    epoch = parse_epoch(name)
    if epoch is not None:
        return CkptKey(epoch)
    if not isinstance(name, str) or len(name) > 60:
        return None
    m = _PARTIAL_RE.fullmatch(name)
    if m is None:
        return None
    key = CkptKey(int(m.group(1)), int(m.group(2)))
    return key if key.partial and key.name == name else None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path, follow_symlinks=False)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def is_real_dir(path: Path) -> bool:
    """A directory itself, not a link to one; False when it cannot be looked at."""
    st = _lstat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


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
    batch: int = 0  # > 0: a mid-epoch checkpoint (epochs/NNN+BBBBBB)

    @property
    def ok(self) -> bool:
        return self.epoch is not None and self.problem is None

    @property
    def key(self) -> CkptKey | None:
        return None if self.epoch is None else CkptKey(self.epoch, self.batch)


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

    def epoch_dir(self, epoch: int, batch: int = 0) -> Path:
        return self.epochs_dir / CkptKey(epoch, batch).name

    def pointer_text(self, epoch: int, batch: int = 0) -> str:
        """The relative target written into ``last``/``best`` for a checkpoint."""
        return f"epochs/{CkptKey(epoch, batch).name}"

    def complete_keys(self) -> list[CkptKey]:
        """Every complete checkpoint, epoch-end and mid-epoch, oldest first. Never raises."""
        keys = []
        for name in self._names():
            key = parse_key(name)
            if key is not None and is_real_dir(self.epochs_dir / name) \
                    and self.is_complete(key.epoch, key.batch):
                keys.append(key)
        return sorted(keys)

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.epochs_dir)
        except OSError:  # missing, unreadable, not a directory: nothing to list
            return []

    def list_epochs(self) -> list[int]:
        """Every ``epochs/NNN`` directory, complete or not, ascending. Never raises.

        A symlink named like an epoch is not a checkpoint (it is never followed).
        """
        found = []
        for name in self._names():
            n = parse_epoch(name)
            if n is not None and is_real_dir(self.epochs_dir / name):
                found.append(n)
        return sorted(found)

    def is_complete(self, epoch: int, batch: int = 0) -> bool:
        """``ckpt-info.json`` is written last: its presence marks the checkpoint complete.

        It must be a regular file; an epoch that cannot be looked into (``chmod 000``)
        is not complete as far as anyone can tell. Never raises.
        """
        st = _lstat(self.epoch_dir(epoch, batch) / INFO_FILE)
        return st is not None and stat.S_ISREG(st.st_mode)

    def complete_epochs(self) -> list[int]:
        return [e for e in self.list_epochs() if self.is_complete(e)]

    def leftovers(self) -> list[Path]:
        """Asides and half-deleted directories a crash may have left in ``epochs/``."""
        names = self._names()
        return sorted(
            self.epochs_dir / n
            for n in names
            if n.startswith(_ASIDE_PREFIX) or n.startswith(_DELETING_PREFIX)
        )

    def read_pointer(self, name: str) -> Pointer:
        """Read ``last`` or ``best`` without following it outside this layout. Never raises.

        ``epoch`` is set when the pointer names ``epochs/NNN`` of this layout and that
        entry exists; whether it is a valid checkpoint (a real directory, ...) is for
        ``integrity.check_checkpoint`` to say, so restart can fall back with a reason.
        """
        path = self.base / name
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return Pointer(name, path, "missing", problem="missing")
        except (OSError, ValueError) as err:
            return Pointer(name, path, "other", problem=f"cannot be looked at: {_why(err)}")
        if stat.S_ISLNK(st.st_mode):
            try:
                raw = os.readlink(path)
            except OSError as err:
                return Pointer(name, path, "symlink", problem=f"unreadable link: {_why(err)}")
            return self._resolve(Pointer(name, path, "symlink", raw=raw))
        if stat.S_ISDIR(st.st_mode):
            return Pointer(
                name, path, "directory", problem="is a plain directory, not a link to epochs/NNN"
            )
        if stat.S_ISREG(st.st_mode):
            from .safeio import read_regular

            try:
                raw = read_regular(path, _MAX_POINTER_BYTES, "a pointer file").decode(
                    "utf-8").strip()
            except (OSError, ValueError) as err:
                return Pointer(name, path, "file", problem=f"unreadable pointer file: {_why(err)}")
            return self._resolve(Pointer(name, path, "file", raw=raw))
        return Pointer(name, path, "other", problem="is neither a link nor a pointer file")

    def _resolve(self, p: Pointer) -> Pointer:
        raw = p.raw or ""
        if not raw:
            return _with(p, problem="empty pointer")
        if "\0" in raw or "\n" in raw:
            return _with(p, problem=f"escapes the tree: {_show(raw)} is not a path inside "
                                    f"{_show(self.epochs_dir)}")
        target = Path(os.path.normpath(self.base / raw))  # an absolute raw wins the join
        key = parse_key(target.name)
        if key is not None and key.partial and _same_dir(target.parent, self.epochs_dir):
            if _lstat(self.epoch_dir(key.epoch, key.batch)) is None:
                return _with(p, epoch=None, problem=f"dangling: {_show(raw)} does not exist")
            return _with(p, epoch=key.epoch, batch=key.batch)
        epoch = parse_epoch(target.name)
        in_tree = epoch is not None and _same_dir(target.parent, self.epochs_dir)
        if in_tree:
            assert epoch is not None
            if _lstat(self.epoch_dir(epoch)) is None:
                return _with(p, epoch=None, problem=f"dangling: {_show(raw)} does not exist")
            return _with(p, epoch=epoch)
        # The original wrote absolute links; after the tree was moved they dangle. If
        # the name ends in epochs/NNN and that exists here, re-anchor to it.
        missing = os.path.isabs(raw) and _lstat(Path(raw)) is None
        if missing and epoch is not None and target.parent.name == "epochs" \
                and is_real_dir(self.epoch_dir(epoch)):
            return _with(p, epoch=epoch, reanchored=True)
        if missing:
            return _with(p, problem=f"dangling: {_show(raw)} does not exist")
        return _with(
            p, problem=f"escapes the tree: {_show(raw)} is not inside {_show(self.epochs_dir)}"
        )

    def read_info(self, epoch: int, batch: int = 0) -> dict[str, Any]:
        """Parse a checkpoint's ``ckpt-info.json`` (raises OSError / ValueError)."""
        return read_info_file(self.epoch_dir(epoch, batch) / INFO_FILE)


def recorded_metrics(layout: Layout, metric: str, mode: str) -> dict[int, float | None]:
    """Each complete epoch-end checkpoint's own ``metric_value`` of ``metric`` under
    ``mode`` (epoch -> value). Never raises: a checkpoint whose info cannot be read, that
    records another metric or direction, or none (the original's), is left out."""
    found: dict[int, float | None] = {}
    for key in layout.complete_keys():
        if key.partial:
            continue
        try:
            info = layout.read_info(key.epoch)
        except (OSError, ValueError):
            continue
        value = info.get("metric_value")
        if info.get("save_best_metric") != metric or info.get("best_mode") != mode \
                or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        found[key.epoch] = float(value)
    return found


def _with(p: Pointer, **changes: Any) -> Pointer:
    values = {f: getattr(p, f) for f in ("name", "path", "kind", "raw", "epoch", "problem",
                                          "reanchored", "batch")}
    values.update(changes)
    return Pointer(**values)


def _same_dir(a: Path, b: Path) -> bool:
    """Same directory by (st_dev, st_ino): no realpath (PATH_MAX-deep cwds)."""
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except (OSError, ValueError):
        return False


def _show(value: Any) -> str:
    from .safeio import printable

    return printable(os.fspath(value) if isinstance(value, os.PathLike) else value)


def _why(err: BaseException) -> str:
    return _show(getattr(err, "strerror", None) or err)


def read_info_file(path: Path) -> dict[str, Any]:
    """Read a ``ckpt-info.json``.

    Only a regular file is read (a symlink, FIFO or device is refused without being
    opened), of at most ``MAX_INFO_BYTES``; it must be UTF-8 holding one JSON object.
    Non-standard ``NaN``/``Infinity`` are accepted (the original wrote Infinity).

    Raises:
        OSError: it cannot be read (FileNotFoundError, PermissionError, UnsafeFileError
            for a link or special file ...).
        ValueError: anything wrong with its content: too large, not UTF-8, not JSON,
            nested too deeply, an integer beyond Python's limit, not an object.
    """
    from .safeio import read_regular

    data = read_regular(path, MAX_INFO_BYTES, INFO_FILE)
    try:
        text = data.decode("utf-8")
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"{_show(path)}: JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise ValueError(f"{_show(path)}: {_show(err)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{_show(path)}: expected a JSON object, got {type(value).__name__}")
    return value


@dataclass
class CheckpointSummary:
    """One row of a listing (used by restart diagnostics and the CLI)."""

    epoch: int
    path: Path
    complete: bool
    info: dict[str, Any] | None = None
    error: str | None = None
    markers: list[str] = field(default_factory=list)
    batch: int = 0  # > 0: a mid-epoch checkpoint (epochs/NNN+BBBBBB)

    @property
    def key(self) -> CkptKey:
        return CkptKey(self.epoch, self.batch)


def info_problem(layout: Layout, epoch: int, batch: int = 0) -> str | None:
    """Why a checkpoint's ``ckpt-info.json`` must not be read, or None when it may be.

    Checked before any read, without following links: a symlink (to ``/dev/zero``, a
    FIFO, a file elsewhere), a device or FIFO (a read would hang), or a file too big to
    be one. A missing file is not a problem here (the checkpoint is incomplete).
    """
    path = layout.epoch_dir(epoch, batch) / INFO_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{INFO_FILE}: cannot be examined: {_why(err)}"
    if stat.S_ISLNK(st.st_mode):
        return f"{INFO_FILE}: is a symlink (never followed)"
    if not stat.S_ISREG(st.st_mode):
        return f"{INFO_FILE}: not a regular file"
    if st.st_size > MAX_INFO_BYTES:
        return f"{INFO_FILE}: {st.st_size:,} bytes, too big to be a checkpoint's record"
    return None


def read_info_safely(layout: Layout, epoch: int, batch: int = 0) -> dict[str, Any]:
    """A checkpoint's parsed ``ckpt-info.json``; ValueError when it must not or cannot be
    read (``batch`` > 0: a mid-epoch checkpoint).

    Raises:
        FileNotFoundError: there is none (an incomplete checkpoint).
        ValueError: see :func:`info_problem`, or it is not a JSON object.
        OSError: it cannot be read.
    """
    problem = info_problem(layout, epoch, batch)
    if problem is not None:
        raise ValueError(problem)
    try:
        return layout.read_info(epoch, batch)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _incomplete_problem(directory: Path) -> str | None:
    """What keeps a checkpoint without a readable ``ckpt-info.json`` from being looked at,
    beyond the file simply not being there yet (None then)."""
    try:
        os.stat(directory / INFO_FILE, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot be looked into: {_why(err)}"
    return f"{INFO_FILE} is not a regular file"


def summarize(layout: Layout) -> list[CheckpointSummary]:
    """Every checkpoint directory with its parsed info and markers, oldest first.

    Epoch-end directories (complete or not), then complete mid-epoch checkpoints. Never
    raises: any content of a ``ckpt-info.json`` (deep nesting, a directory in its place,
    a link ...) makes that one row's ``error`` say why, instead of stopping the listing.
    """
    last = layout.read_pointer("last")
    best = layout.read_pointer("best")
    keys = [(CkptKey(e), layout.is_complete(e)) for e in layout.list_epochs()]
    keys += [(k, True) for k in layout.complete_keys() if k.partial]
    rows = []
    for key, complete in keys:
        row = CheckpointSummary(key.epoch, layout.epoch_dir(key.epoch, key.batch), complete,
                                batch=key.batch)
        if complete:
            try:
                row.info = read_info_safely(layout, key.epoch, key.batch)
            except Exception as err:  # any content is one unreadable row, not a crash
                row.error = f"unreadable {INFO_FILE}: {_show(err)}"
        else:
            row.error = _incomplete_problem(row.path)
        if last.ok and last.key == key:
            row.markers.append("last")
        if key.partial:
            row.markers.append("mid-epoch")
        elif best.ok and best.key == key:
            row.markers.append("best")
        rows.append(row)
    return sorted(rows, key=lambda r: r.key)
