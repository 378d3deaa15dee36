"""``list`` and ``show``: read-only views of a checkpoint directory."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from ..storage.fsio import json_safe
from ..storage.layout import INFO_FILE, Layout, read_info_safely
from ..storage.safeio import printable
from ..storage.usage import dir_size, human_size
from .common import (
    EXIT_OK,
    CliError,
    Row,
    as_size,
    fmt_number,
    layout_name,
    metric_names,
    metric_of,
    open_directory,
    pointer_text,
    print_table,
    resolve_epoch,
    rows_of,
)

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
            "alone": r.alone,
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
        "disk_use": dir_size(layout.base),
        "sizes_sum": sum(r.size for r in rows),
    }


def print_listing(layout: Layout, rows: Sequence[Row]) -> None:
    kind = "original CANDLE layout" if layout.original else "candle-ckpt layout"
    print(f"{printable(layout.root)}  ({kind}: {printable(layout.base)})")
    last_text, best_text = pointer_text(layout, "last"), pointer_text(layout, "best")
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
            value = f"{printable(info['save_best_metric'])}={value}"
        table.append([
            str(r.summary.key), value, ",".join(r.summary.markers), human_size(r.size),
            human_size(r.alone), printable(info.get("timestamp", "-")), r.status,
        ])
    print()
    print_table(["EPOCH", metric_header, "MARK", "SIZE", "ALONE", "SAVED", "STATUS"], table,
                [True, True, False, True, True, False, False])
    print(f"\n{len(rows)} checkpoint{'s' if len(rows) != 1 else ''}: sizes add up to "
          f"{human_size(sum(r.size for r in rows))}; {printable(layout.base)} occupies "
          f"{human_size(dir_size(layout.base))} on disk")
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
        print(f"leftover of an interrupted operation: {printable(path)} (the next run removes it)")


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
    print(f"checkpoint {printable(directory)}" + (f"  ({', '.join(markers)})" if markers else ""))
    keys = [k for k in _SHOW_ORDER if k in info]
    keys += sorted(k for k in info if k not in _SHOW_ORDER and k != "files")
    width = max(len(printable(k)) for k in keys) if keys else 0
    for key in keys:
        value = info[key]
        text = value if isinstance(value, str) else json.dumps(json_safe(value))
        if key == "time_elapsed" and isinstance(value, (int, float)) and not isinstance(
                value, bool):
            try:
                text = f"{float(value):.3f} s since the previous checkpoint of its run"
            except OverflowError:
                pass  # an absurd integer: shown as it is
        print(f"  {printable(key).ljust(width)}  {printable(text)}")
    files = info.get("files")
    if isinstance(files, dict) and not files:
        print("  files: none recorded")
    elif isinstance(files, dict):
        sizes = [as_size(e.get("size")) if isinstance(e, dict) else None
                 for e in files.values()]
        total = sum(s for s in sizes if s is not None)
        print(f"  files ({len(files)}, {human_size(total)}):")
        name_width = max(len(printable(n)) for n in files)
        for name, entry in sorted(files.items()):
            entry = entry if isinstance(entry, dict) else {}
            size = as_size(entry.get("size"))
            size_text = f"{size:>12,} bytes" if size is not None else (
                f"{'?':>12} bytes (recorded: "
                f"{printable(json.dumps(json_safe(entry.get('size'))))})")
            checksum = entry.get("checksum")
            print(f"    {printable(name).ljust(name_width)}  {size_text}"
                  + (f"  {printable(checksum)}" if checksum else ""))
    else:
        present = sorted(p.name for p in directory.iterdir() if p.name != INFO_FILE)
        print("  files (no manifest: written by the original CANDLE code):")
        for name in present:
            size = (directory / name).lstat().st_size
            print(f"    {printable(name)}  {size:,} bytes")
    return EXIT_OK


def _read_info_or_fail(layout: Layout, epoch: int) -> dict[str, Any]:
    path = layout.epoch_dir(epoch) / INFO_FILE
    try:
        return read_info_safely(layout, epoch)
    except FileNotFoundError:
        raise CliError(f"epoch {epoch} is incomplete: {printable(path)} is missing") from None
    except (OSError, ValueError, RecursionError) as err:
        raise CliError(f"{printable(path)} cannot be read: {printable(err)}") from None
