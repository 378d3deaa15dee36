"""What every command shares: opening a directory, epoch arguments, tables, the log.

Nothing here prints a checkpoint's own strings raw: names, timestamps and pointer
targets come from files anyone may have written, so they pass through
:func:`~candle_ckpt.storage.safeio.printable` (a newline in a file name must not forge
an output or log line).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage.layout import (
    LOCK_FILE,
    LOG_FILE,
    TIME_FORMAT,
    CheckpointSummary,
    Layout,
    summarize,
)
from ..storage.safeio import append_log_line, printable
from ..storage.usage import Footprint

PROG = "candle-ckpt"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
DEMO_TAG = ".candle-ckpt-demo"  # marks a directory made by `candle-ckpt demo`
DEMO_RUN = "interrupted"  # the demo's run that was killed and restarted


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------ opening


def open_directory(arg: str) -> Layout:
    """The layout of the checkpoint directory a user named.

    Accepts the ``ckpt_directory`` of a run (either layout), the ``ckpts/`` directory
    inside one of ours, and the top directory of ``candle-ckpt demo`` (its killed and
    restarted run, ``interrupted/``, is used).

    Raises:
        CliError: no such directory, not a directory, or not a checkpoint directory.
    """
    path = Path(arg)
    if not path.exists():
        raise CliError(f"no such directory: {printable(arg)}")
    if not path.is_dir():
        raise CliError(f"not a directory: {printable(arg)}")
    root = path
    if not _has_run_files(path) and path.name == "ckpts" and _has_run_files(path.parent):
        root = path.parent
    elif _is_demo_root(path):
        root = path / DEMO_RUN
    layout = Layout.for_reading(root)
    if not (
        layout.epochs_dir.is_dir()
        or os.path.lexists(layout.last)
        or os.path.lexists(layout.best)
        or _has_run_files(root)
    ):
        raise CliError(
            f"{printable(arg)} is not a checkpoint directory: it has none of ckpts/epochs/, "
            f"epochs/, last or {LOG_FILE} (give the ckpt_directory of a run)"
        )
    return layout


def _has_run_files(path: Path) -> bool:
    return (path / LOG_FILE).is_file() or (path / LOCK_FILE).is_file()


def _is_demo_root(path: Path) -> bool:
    # Only a directory the demo tagged and that is not itself a run: a run's tree never
    # holds the tag, so a real ckpt_directory is never redirected.
    return ((path / DEMO_TAG).is_file() and (path / DEMO_RUN).is_dir()
            and not _has_run_files(path))


def layout_name(layout: Layout) -> str:
    return "original-candle" if layout.original else "candle-ckpt"


def resolve_epoch(layout: Layout, spec: str, pointers: Sequence[str] = ("last", "best")) -> int:
    """An epoch argument: a number ("7", "007"), or one of ``pointers`` ("last", "best")."""
    if spec in pointers:
        p = layout.read_pointer(spec)
        if p.epoch is None:
            raise CliError(f"{spec} ({printable(p.path)}) is not usable: {printable(p.problem)}")
        return p.epoch
    if not (spec.isascii() and spec.isdigit()):
        options = ["an epoch number", *(repr(n) for n in pointers)]
        accepted = (", ".join(options[:-1]) + " or " + options[-1]) if len(options) > 1 else (
            options[0])
        raise CliError(f"epoch {printable(repr(spec))} is not accepted; give {accepted}")
    epoch = int(spec)
    if epoch not in layout.list_epochs():
        existing = ", ".join(map(str, layout.list_epochs())) or "none"
        raise CliError(f"no epoch {epoch} in {printable(layout.epochs_dir)} "
                       f"(epochs on disk: {existing})")
    return epoch


# ------------------------------------------------------------------------------ helpers


def as_size(value: Any) -> int | None:
    """A manifest's recorded size when it is a plain non-negative integer, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def metric_of(info: dict[str, Any] | None) -> float | None:
    """This checkpoint's value of the best metric.

    Ours record it as ``metric_value``. The original CANDLE recorded only
    ``best_metric_last`` (the best so far when the checkpoint was written), shown instead.
    """
    if not info:
        return None
    value = info["metric_value"] if "metric_value" in info else info.get("best_metric_last")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: not a metric we can show
        return None


def fmt_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return printable(value)


def pointer_text(layout: Layout, name: str) -> str:
    p = layout.read_pointer(name)
    if p.kind == "missing":
        return f"{name}: none"
    if p.epoch is None:
        return f"{name}: BROKEN ({printable(p.problem)})"
    text = f"{name} -> {layout.pointer_text(p.epoch, p.batch)}"
    if p.reanchored:
        text += f" (re-anchored: {printable(p.raw)} dangles, the tree was moved)"
    return text


def append_log(layout: Layout, message: str) -> None:
    """Record a change made from the command line in ``<dir>/ckpt.log``, in the engine's
    line format. The log is opened as the engine opens it (never through a link, never
    a FIFO or device); an unwritable log does not turn the change made into a failure.
    """
    try:
        append_log_line(layout.log_file,
                        f"{time.strftime(TIME_FORMAT)} INFO    {PROG}: {printable(message)}")
    except OSError:
        pass


# ------------------------------------------------------------------------------ reading

# ------------------------------------------------------------------------------ rows


@dataclass
class Row:
    summary: CheckpointSummary
    size: int  # every file the checkpoint needs
    alone: int  # what deleting it alone would free

    @property
    def info(self) -> dict[str, Any] | None:
        return self.summary.info

    @property
    def status(self) -> str:
        if self.summary.error and self.summary.complete:
            return "unreadable"
        return "complete" if self.summary.complete else "incomplete"


def rows_of(layout: Layout) -> list[Row]:
    summaries = summarize(layout)
    footprint = Footprint.measure({s.key: s.path for s in summaries})
    return [Row(s, footprint.size(s.key), footprint.alone(s.key)) for s in summaries]


def metric_names(rows: Sequence[Row]) -> list[str]:
    names = {printable(r.info.get("save_best_metric")) for r in rows if r.info}
    return sorted(names - {"None"})


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                right: Sequence[bool]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w)
               for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(out).rstrip()

    print(line(header))
    for r in rows:
        print(line(r))
