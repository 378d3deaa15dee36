"""candle-ckpt: see and steer checkpoint directories without writing Python.

Subcommands: ``list``, ``show``, ``verify``, ``rollback``, ``prune``, ``plot``, ``demo``.
Each reads both layouts (ours, ``<dir>/ckpts/{epochs,last,best}``, and the original
CANDLE's, ``<dir>/{epochs,last,best}``). Commands that change the tree (``rollback``,
``prune``) take the writer lock, so they cannot race a training run in the same
directory, and append what they did to ``<dir>/ckpt.log``.

Exit status: 0 success; 1 ``verify`` found a bad checkpoint (or the demo's weights
differ); 2 an error (bad arguments, no such directory or epoch, locked directory, ...),
reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .commit import Committer, acquire_lock, json_safe, release_lock
from .errors import CkptError
from .integrity import (
    DEFAULT_ALGORITHM,
    DISABLED,
    LEGACY_ALGORITHM,
    check_checkpoint,
    has_checksums,
)
from .layout import INFO_FILE, LOCK_FILE, LOG_FILE, CheckpointSummary, Layout, summarize
from .policy import epochs_to_keep

PROG = "candle-ckpt"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------ opening


def open_directory(arg: str) -> Layout:
    """The layout of the checkpoint directory a user named.

    Accepts the ``ckpt_directory`` of a run (either layout) and, for convenience, the
    ``ckpts/`` directory inside one of ours.

    Raises:
        CliError: no such directory, not a directory, or not a checkpoint directory.
    """
    path = Path(arg)
    if not path.exists():
        raise CliError(f"no such directory: {arg}")
    if not path.is_dir():
        raise CliError(f"not a directory: {arg}")
    root = path
    if not _has_run_files(path) and path.name == "ckpts" and _has_run_files(path.parent):
        root = path.parent
    layout = Layout.for_reading(root)
    if not (
        layout.epochs_dir.is_dir()
        or os.path.lexists(layout.last)
        or os.path.lexists(layout.best)
        or _has_run_files(root)
    ):
        raise CliError(
            f"{arg} is not a checkpoint directory: it has none of ckpts/epochs/, epochs/, "
            f"last or {LOG_FILE} (give the ckpt_directory of a run)"
        )
    return layout


def _has_run_files(path: Path) -> bool:
    return (path / LOG_FILE).is_file() or (path / LOCK_FILE).is_file()


def layout_name(layout: Layout) -> str:
    return "original-candle" if layout.original else "candle-ckpt"


def resolve_epoch(layout: Layout, spec: str, pointers: bool = True) -> int:
    """An epoch argument: a number ("7", "007"), or "last"/"best" when ``pointers``."""
    if pointers and spec in ("last", "best"):
        p = layout.read_pointer(spec)
        if p.epoch is None:
            raise CliError(f"{spec} ({p.path}) is not usable: {p.problem}")
        return p.epoch
    if not spec.isdigit():
        accepted = "an epoch number" + (", 'last' or 'best'" if pointers else "")
        raise CliError(f"epoch {spec!r} is not accepted; give {accepted}")
    epoch = int(spec)
    if epoch not in layout.list_epochs():
        existing = ", ".join(map(str, layout.list_epochs())) or "none"
        raise CliError(f"no epoch {epoch} in {layout.epochs_dir} (epochs on disk: {existing})")
    return epoch


# ------------------------------------------------------------------------------ helpers


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


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
    return float(value)


def fmt_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pointer_text(layout: Layout, name: str) -> str:
    p = layout.read_pointer(name)
    if p.kind == "missing":
        return f"{name}: none"
    if p.epoch is None:
        return f"{name}: BROKEN ({p.problem})"
    text = f"{name} -> {layout.pointer_text(p.epoch)}"
    if p.reanchored:
        text += f" (re-anchored: {p.raw} dangles, the tree was moved)"
    return text


def append_log(layout: Layout, message: str) -> None:
    """Record a change made from the command line in ``<dir>/ckpt.log``."""
    stamp = time.strftime(_TIME_FORMAT)
    try:
        with open(layout.log_file, "a", encoding="utf-8") as f:
            f.write(f"{stamp} INFO    {PROG}: {message}\n")
    except OSError:
        pass  # the change is made; a read-only log must not turn it into a failure


@dataclass
class Row:
    summary: CheckpointSummary
    size: int

    @property
    def info(self) -> dict[str, Any] | None:
        return self.summary.info

    @property
    def status(self) -> str:
        if self.summary.error:
            return "unreadable"
        return "complete" if self.summary.complete else "incomplete"


def rows_of(layout: Layout) -> list[Row]:
    return [Row(s, dir_size(s.path)) for s in summarize(layout)]


def metric_names(rows: Sequence[Row]) -> list[str]:
    names = {str(r.info.get("save_best_metric")) for r in rows if r.info}
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


# ------------------------------------------------------------------------------ list


def cmd_list(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    rows = rows_of(layout)
    if args.json:
        print(json.dumps(json_safe(listing_json(layout, rows)), indent=1))
        return EXIT_OK
    print_listing(layout, rows)
    return EXIT_OK


def listing_json(layout: Layout, rows: Sequence[Row]) -> dict[str, Any]:
    def pointer(name: str) -> dict[str, Any]:
        p = layout.read_pointer(name)
        return {"epoch": p.epoch, "kind": p.kind, "target": p.raw, "problem": p.problem,
                "reanchored": p.reanchored}

    checkpoints = []
    for r in rows:
        info = r.info or {}
        checkpoints.append({
            "epoch": r.summary.epoch,
            "path": os.path.abspath(r.summary.path),
            "status": r.status,
            "complete": r.summary.complete,
            "last": "last" in r.summary.markers,
            "best": "best" in r.summary.markers,
            "metric": info.get("save_best_metric"),
            "metric_value": info.get("metric_value"),
            "best_metric_last": info.get("best_metric_last"),
            "size": r.size,
            "timestamp": info.get("timestamp"),
            "backend": info.get("backend"),
            "error": r.summary.error,
        })
    return {
        "directory": os.path.abspath(layout.root),
        "layout": layout_name(layout),
        "base": os.path.abspath(layout.base),
        "last": pointer("last"),
        "best": pointer("best"),
        "checkpoints": checkpoints,
    }


def print_listing(layout: Layout, rows: Sequence[Row]) -> None:
    kind = "original CANDLE layout" if layout.original else "candle-ckpt layout"
    print(f"{layout.root}  ({kind}: {layout.base})")
    last_text, best_text = _pointer_text(layout, "last"), _pointer_text(layout, "best")
    if len(last_text) + len(best_text) <= 70:
        print(f"{last_text}    {best_text}")
    else:
        print(f"{last_text}\n{best_text}")
    if not rows:
        print("no checkpoints")
        return
    names = metric_names(rows)
    metric_header = names[0] if len(names) == 1 else "metric"
    table = []
    for r in rows:
        info = r.info or {}
        value = fmt_number(metric_of(info))
        if len(names) > 1 and info.get("save_best_metric"):
            value = f"{info['save_best_metric']}={value}"
        table.append([
            str(r.summary.epoch), value, ",".join(r.summary.markers), human_size(r.size),
            str(info.get("timestamp", "-")), r.status,
        ])
    print()
    print_table(["EPOCH", metric_header, "MARK", "SIZE", "SAVED", "STATUS"], table,
                [True, True, False, True, False, False])
    last = layout.read_pointer("last").epoch
    if last is not None:
        after = [r.summary.epoch for r in rows if r.summary.epoch > last]
        if after:
            print(f"\nepochs after last ({', '.join(map(str, after))}) are not used by "
                  "restart; training overwrites them when it gets there")
    if any("metric_value" not in (r.info or {"metric_value": None}) for r in rows):
        print("\n(original CANDLE checkpoints record only the best value so far; "
              "shown for them)")
    for path in layout.leftovers():
        print(f"leftover of an interrupted operation: {path} (the next run removes it)")


# ------------------------------------------------------------------------------ show

_SHOW_ORDER = (
    "epoch", "backend", "format_version", "save_best_metric", "best_mode", "metric_value",
    "best_metric_last", "epoch_best", "timestamp", "time_elapsed", "model_file",
    "checksum_algorithm", "checksum", "metadata",
)


def cmd_show(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    epoch = resolve_epoch(layout, args.epoch)
    directory = layout.epoch_dir(epoch)
    info = _read_info_or_fail(layout, epoch)
    if args.json:
        print(json.dumps(json_safe(info), indent=1))
        return EXIT_OK
    markers = [n for n in ("last", "best") if layout.read_pointer(n).epoch == epoch]
    print(f"checkpoint {directory}" + (f"  ({', '.join(markers)})" if markers else ""))
    keys = [k for k in _SHOW_ORDER if k in info]
    keys += sorted(k for k in info if k not in _SHOW_ORDER and k != "files")
    width = max(len(k) for k in keys) if keys else 0
    for key in keys:
        value = info[key]
        text = value if isinstance(value, str) else json.dumps(json_safe(value))
        if key == "time_elapsed" and isinstance(value, (int, float)):
            text = f"{value:.3f} s since the previous checkpoint of its run"
        print(f"  {key.ljust(width)}  {text}")
    files = info.get("files")
    if isinstance(files, dict) and files:
        total = sum(int(e.get("size", 0)) for e in files.values() if isinstance(e, dict))
        print(f"  files ({len(files)}, {human_size(total)}):")
        name_width = max(len(n) for n in files)
        for name, entry in sorted(files.items()):
            entry = entry if isinstance(entry, dict) else {}
            checksum = entry.get("checksum")
            print(f"    {name.ljust(name_width)}  {entry.get('size', '?'):>12,} bytes"
                  + (f"  {checksum}" if checksum else ""))
    else:
        present = sorted(p.name for p in directory.iterdir() if p.name != INFO_FILE)
        print("  files (no manifest: written by the original CANDLE code):")
        for name in present:
            size = (directory / name).stat().st_size
            print(f"    {name}  {size:,} bytes")
    return EXIT_OK


def _read_info_or_fail(layout: Layout, epoch: int) -> dict[str, Any]:
    path = layout.epoch_dir(epoch) / INFO_FILE
    try:
        return layout.read_info(epoch)
    except FileNotFoundError:
        raise CliError(f"epoch {epoch} is incomplete: {path} is missing") from None
    except (OSError, ValueError) as err:
        raise CliError(f"{path} cannot be read: {err}") from None


# ------------------------------------------------------------------------------ verify


def check_epoch(layout: Layout, epoch: int) -> tuple[list[str], str]:
    """(problems, description) of one checkpoint; sizes always, checksums where recorded.

    Problems name the file they concern by its full path.
    """
    directory = layout.epoch_dir(epoch)
    info, found = check_checkpoint(directory, epoch, True)
    problems = [f"{directory}{os.sep}{p}" for p in found]
    if info is None or info.get("epoch") != epoch:
        return problems, ""
    files = info.get("files")
    if isinstance(files, dict):
        count = len(files)
        nbytes = sum(int(e.get("size", 0)) for e in files.values() if isinstance(e, dict))
        summed = bool(files) and has_checksums(info)
        algorithm = info.get("checksum_algorithm") or DEFAULT_ALGORITHM
        how = f"sizes and {algorithm} checksums" if summed else "sizes only (no checksums recorded)"
        return problems, f"{count} file(s), {human_size(nbytes)}; {how}"
    checksum = info.get("checksum")
    if isinstance(checksum, str) and checksum != DISABLED:
        algorithm = info.get("checksum_algorithm") or LEGACY_ALGORITHM
        how = f"original CANDLE checkpoint; {info.get('model_file')} {algorithm} checksum"
    else:
        how = f"original CANDLE checkpoint; {info.get('model_file')} present (no checksum)"
    return problems, how


def cmd_verify(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    if args.epochs:
        epochs = sorted({resolve_epoch(layout, e) for e in args.epochs})
    else:
        epochs = layout.list_epochs()
    failed = 0
    for epoch in epochs:
        problems, how = check_epoch(layout, epoch)
        if problems:
            failed += 1
            print(f"FAILED  epoch {epoch}  {layout.epoch_dir(epoch)}")
            for problem in problems:
                print(f"        {problem}")
        else:
            print(f"OK      epoch {epoch}  {layout.epoch_dir(epoch)}  ({how})")
    if not args.epochs:
        for name in ("last", "best"):
            p = layout.read_pointer(name)
            if p.kind != "missing" and p.epoch is None:
                failed += 1
                print(f"FAILED  {name}  {p.path}: {p.problem}")
    if not epochs:
        print(f"no checkpoints in {layout.epochs_dir}")
    elif failed:
        print(f"{failed} of {len(epochs)} checked failed", file=sys.stderr)
        return EXIT_FAILED
    else:
        print(f"all {len(epochs)} checkpoint(s) hold")
    return EXIT_OK


# ------------------------------------------------------------------------------ rollback


def cmd_rollback(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    epoch = resolve_epoch(layout, args.epoch)
    key, _ = acquire_lock(layout)  # a running training holds it: refuse rather than race
    try:
        problems, _ = check_epoch(layout, epoch)
        if problems:
            raise CliError(
                f"refusing to roll back to epoch {epoch}: it fails verification: "
                + "; ".join(problems)
            )
        before = layout.read_pointer("last")
        was = layout.pointer_text(before.epoch) if before.epoch is not None else (
            before.raw or before.problem or "missing")
        Committer(layout, lambda message: append_log(layout, message)).point("last", epoch)
        append_log(layout, f"rollback: last -> {layout.pointer_text(epoch)} (was {was})")
    finally:
        release_lock(key)
    print(f"last -> {layout.pointer_text(epoch)} (was {was}); the next restart resumes "
          f"after epoch {epoch}")
    best = layout.read_pointer("best").epoch
    if best is not None and best > epoch:
        print(f"best still points at epoch {best}; it is replaced if training re-does "
              "that epoch")
    return EXIT_OK


# ------------------------------------------------------------------------------ prune


def cmd_prune(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    key = None if args.dry_run else acquire_lock(layout)[0]
    try:
        return _prune(layout, args.keep, args.mode, args.dry_run)
    finally:
        if key is not None:
            release_lock(key)


def _prune(layout: Layout, keep: int, mode: str, dry_run: bool) -> int:
    last = layout.read_pointer("last")
    best = layout.read_pointer("best")
    for p in (last, best):
        if p.kind != "missing" and p.epoch is None:
            raise CliError(f"refusing to prune: {p.name} ({p.path}) is broken: {p.problem}; "
                           f"fix it with '{PROG} rollback' first")
    complete = layout.complete_epochs()
    if not complete:
        print(f"no complete checkpoints in {layout.epochs_dir}; nothing to prune")
        return EXIT_OK
    if last.epoch is None:
        raise CliError(f"refusing to prune: {layout.last} is missing, so it is not known which "
                       f"checkpoint a restart needs; set it with '{PROG} rollback' first")
    protected = {last.epoch} | ({best.epoch} if best.epoch is not None else set())
    kept = epochs_to_keep(mode, keep, complete, last.epoch, best.epoch, protected)
    doomed = [e for e in complete if e not in kept]
    print(f"keep policy {mode}/{keep} over {len(complete)} checkpoint(s): keeping "
          f"{', '.join(map(str, sorted(kept)))} (last {last.epoch}"
          + (f", best {best.epoch})" if best.epoch is not None else ")"))
    committer = Committer(layout, lambda message: append_log(layout, message))
    freed = 0
    verb = "would remove" if dry_run else "removed"
    for epoch in doomed:
        size = dir_size(layout.epoch_dir(epoch))
        if not dry_run:
            committer.delete_epoch(epoch)
            append_log(layout, f"prune ({mode}/{keep}): removed {layout.pointer_text(epoch)} "
                               f"({size} bytes)")
        freed += size
        print(f"{verb} {layout.epoch_dir(epoch)}  ({human_size(size)})")
    what = "would free" if dry_run else "freed"
    print(f"{verb} {len(doomed)} checkpoint(s), {what} {human_size(freed)} ({freed:,} bytes)")
    incomplete = [e for e in layout.list_epochs() if e not in complete]
    if incomplete:
        print(f"left alone: incomplete epoch directories {', '.join(map(str, incomplete))} "
              "(not checkpoints; remove them by hand if no run is writing them)")
    return EXIT_OK


# ------------------------------------------------------------------------------ plot


def cmd_plot(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise CliError(f"cannot write {output}: no such directory {output.parent}")
    rows = [r for r in rows_of(layout) if metric_of(r.info) is not None]
    points = [(r.summary.epoch, metric_of(r.info)) for r in rows]
    finite = [(e, v) for e, v in points if v is not None and math.isfinite(v)]
    if not finite:
        raise CliError(f"nothing to plot: no checkpoint in {layout.epochs_dir} records a "
                       "finite metric value")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise CliError(
            "plot needs matplotlib, which is not installed: pip install 'candle-ckpt[plot]'"
        ) from None
    names = metric_names(rows)
    metric = names[0] if len(names) == 1 else "metric"
    best = layout.read_pointer("best").epoch
    last = layout.read_pointer("last").epoch
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        ax.plot([e for e, _ in finite], [v for _, v in finite], "o-", color="tab:blue",
                label=f"{metric} of each saved epoch")
        best_value = dict(finite).get(best) if best is not None else None
        if best is not None and best_value is not None:
            ax.plot([best], [best_value], marker="*", markersize=18, color="tab:red",
                    linestyle="none", label=f"best (epoch {best})")
        if last is not None:
            ax.axvline(last, color="gray", linestyle="--", linewidth=1,
                       label=f"last (epoch {last})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (completed)")
        ax.set_ylabel(metric)
        ax.set_title(f"{layout.root}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output, dpi=100)
    finally:
        plt.close(fig)
    print(f"wrote {output} ({len(finite)} epoch(s) of {metric}"
          + (f", best epoch {best})" if best is not None else ")"))
    return EXIT_OK


# ------------------------------------------------------------------------------ demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.framework, args.dir, epochs=args.epochs, kill_after=args.kill_after)


# ------------------------------------------------------------------------------ main


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="See and steer candle-ckpt (and original CANDLE) checkpoint directories.",
        epilog="Exit status: 0 ok, 1 verification failed, 2 error.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="one row per checkpoint: metric, last/best, size, time")
    p.add_argument("directory", metavar="DIR", help="a run's ckpt_directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="a checkpoint's metadata")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("epoch", metavar="EPOCH", nargs="?", default="last",
                   help="an epoch number, 'last' (default) or 'best'")
    p.add_argument("--json", action="store_true", help="print ckpt-info.json as is")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("verify", help="recompute sizes and checksums; exit 1 if any fails")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("epochs", metavar="EPOCH", nargs="*",
                   help="epochs to check (default: every checkpoint, and last/best)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("rollback", help="point 'last' at EPOCH; the next restart resumes there")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("epoch", metavar="EPOCH", help="an epoch number, or 'best'")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("prune", help="delete old checkpoints by the keep policy")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--keep", type=_positive_int, required=True, metavar="N",
                   help="how many checkpoints to keep (last and best are always kept)")
    p.add_argument("--mode", choices=("linear", "exponential"), default="linear",
                   help="keep policy, as ckpt_keep_mode (default: linear)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("plot", help="the best metric per saved epoch, best marked (PNG)")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="train, SIGKILL, restart, finish; compare with a "
                                    "straight run")
    p.add_argument("--framework", choices=("torch", "keras"), default="torch")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="where to put the runs (default: a new temporary directory)")
    p.add_argument("--epochs", type=_positive_int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--kill-after", type=_positive_int, default=3, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, CkptError) as err:
        _error(str(err))
    except BrokenPipeError:  # e.g. `candle-ckpt list DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _error(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    return EXIT_ERROR


def _error(message: str) -> None:
    line = " ".join(message.split())  # one line, whatever the message held
    try:
        sys.stdout.flush()
    except OSError:
        pass
    print(f"{PROG}: error: {line}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
