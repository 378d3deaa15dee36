"""``verify``: recompute sizes and checksums of checkpoints against their manifests."""

from __future__ import annotations

import argparse
import os

from ..storage.integrity import (
    DEFAULT_ALGORITHM,
    DISABLED,
    LEGACY_ALGORITHM,
    check_checkpoint,
    has_checksums,
)
from ..storage.layout import INFO_FILE, Layout, info_problem
from ..storage.safeio import printable
from ..storage.usage import human_size
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    as_size,
    open_directory,
    resolve_epoch,
)


def check_epoch(layout: Layout, epoch: int) -> tuple[list[str], str]:
    """(problems, description) of one checkpoint; sizes always, checksums where recorded.

    Problems name the file they concern by its full path. Whatever the directory holds,
    this returns: a check that cannot even run is a problem of that checkpoint.
    """
    directory = layout.epoch_dir(epoch)
    unreadable = info_problem(layout, epoch)
    if unreadable is not None:
        return [f"{printable(directory)}{os.sep}{unreadable}"], ""
    try:
        info, found = check_checkpoint(directory, epoch, True)
    except Exception as err:  # any content means "invalid, because ...", never a crash
        return [f"{printable(directory)}: cannot be verified: {type(err).__name__}: "
                f"{printable(err)}"], ""
    problems = [f"{printable(directory)}{os.sep}{printable(p)}" for p in found]
    if info is not None and not problems and type(info.get("epoch")) is not int:
        problems.append(f"{printable(directory / INFO_FILE)}: epoch "
                        f"{printable(repr(info.get('epoch')))} is not an integer")
    if info is None or problems:
        return problems, ""
    files = info.get("files")
    if isinstance(files, dict):
        sizes = [as_size(e.get("size")) if isinstance(e, dict) else None
                 for e in files.values()]
        nbytes = sum(s for s in sizes if s is not None)
        summed = bool(files) and has_checksums(info)
        algorithm = printable(info.get("checksum_algorithm") or DEFAULT_ALGORITHM)
        how = f"sizes and {algorithm} checksums" if summed else "sizes only (no checksums recorded)"
        shared = info.get("objects")
        if isinstance(shared, dict) and shared:
            size = sum(as_size(e.get("size")) or 0 for e in shared.values()
                       if isinstance(e, dict))
            how += (f"; {len(shared)} shared object(s), {human_size(size)}, each checked "
                    f"against its name ({printable(info.get('objects_algorithm'))})")
        return problems, f"{len(files)} file(s), {human_size(nbytes)}; {how}"
    model_file = printable(info.get("model_file"))
    checksum = info.get("checksum")
    if isinstance(checksum, str) and checksum != DISABLED:
        algorithm = printable(info.get("checksum_algorithm") or LEGACY_ALGORITHM)
        how = f"original CANDLE checkpoint; {model_file} {algorithm} checksum"
    else:
        how = f"original CANDLE checkpoint; {model_file} present (no checksum)"
    return problems, how


def is_valid(layout: Layout, epoch: int) -> bool:
    """Does this checkpoint pass every check ``verify`` makes (checksums included)?"""
    problems, _ = check_epoch(layout, epoch)
    return not problems


def cmd_verify(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    if args.epochs:
        epochs = sorted({resolve_epoch(layout, e) for e in args.epochs})
    else:
        epochs = layout.list_epochs()
    # One width for every epoch number, so the paths line up past epoch 9.
    width = max((len(str(e)) for e in epochs), default=1)
    failed = 0
    for epoch in epochs:
        problems, how = check_epoch(layout, epoch)
        where = printable(layout.epoch_dir(epoch))
        if problems:
            failed += 1
            print(f"FAILED  epoch {epoch:>{width}}  {where}")
            for problem in problems:
                print(f"        {problem}")
        else:
            print(f"OK      epoch {epoch:>{width}}  {where}  ({how})")
    broken = []
    if not args.epochs:
        for name in ("last", "best"):
            p = layout.read_pointer(name)
            if p.kind != "missing" and p.epoch is None:
                broken.append(name)
                print(f"FAILED  {name}  {printable(p.path)}: {printable(p.problem)}")
    # The verdict is the command's result, like "all hold": stdout. stderr is for
    # errors that stopped the command (exit 2).
    if not epochs:
        print(f"no checkpoints in {printable(layout.epochs_dir)}")
    if failed or broken:
        parts = [f"{failed} of {len(epochs)} checked failed"] if epochs else []
        if broken:
            parts.append(f"{' and '.join(broken)} broken")
        print("; ".join(parts))
        return EXIT_FAILED
    if epochs:
        print(f"all {len(epochs)} checkpoint(s) hold")
    return EXIT_OK
