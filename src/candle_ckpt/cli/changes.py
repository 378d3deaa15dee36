"""``rollback`` and ``prune``: the commands that change a checkpoint tree.

Both take the directory's writer lock (the one a training run holds), so they refuse
to run beside a training instead of racing it, and record what they did in
``<dir>/ckpt.log``.
"""

from __future__ import annotations

import argparse
import os

from ..policy import epochs_over_budget, epochs_to_keep, protected_epochs, restart_order
from ..storage import objects
from ..storage.commit import Committer
from ..storage.layout import Layout
from ..storage.lock import acquire_lock, release_lock
from ..storage.safeio import printable
from ..storage.usage import Footprint, dir_size, human_size
from .common import (
    EXIT_OK,
    PROG,
    CliError,
    append_log,
    open_directory,
    resolve_epoch,
)
from .verify import check_epoch, is_valid

# ------------------------------------------------------------------------------ rollback


def cmd_rollback(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    # 'last' is not accepted: pointing last at itself changes nothing, and the help
    # promises "a number or 'best'".
    epoch = resolve_epoch(layout, args.epoch, pointers=("best",))
    key, _ = acquire_lock(layout)  # a running training holds it: refuse rather than race
    try:
        problems, _ = check_epoch(layout, epoch)
        if problems:
            raise CliError(
                f"refusing to roll back to epoch {epoch}: it fails verification: "
                + "; ".join(problems)
            )
        before = layout.read_pointer("last")
        was = layout.pointer_text(before.epoch) if before.epoch is not None else printable(
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
def _prune_objects(layout: Layout, doomed: list[int], dry_run: bool
                   ) -> tuple[int, int] | None:
    """The shared objects (``ckpt_dedup``) freed by pruning ``doomed``: (count, bytes);
    None when the tree has no object store. Removes them unless ``dry_run``."""
    if not os.path.isdir(layout.base / objects.OBJECTS_DIR):
        return None
    if dry_run:
        refs = objects.references_by_checkpoint(layout)
        if isinstance(refs, str):
            print(f"shared objects: {printable(refs)}; none would be removed")
            return 0, 0
        keys = {layout.epoch_dir(e).name for e in doomed}
        names = objects.unshared(refs, keys)
        stored = objects.sizes(layout)
        return len(names), sum(stored.get(n, 0) for n in names)
    count, nbytes, why = objects.collect(layout)
    if why is not None:
        print(f"shared objects not removed: {printable(why)}")
    else:
        append_log(layout, f"prune: removed {count} shared object(s) no checkpoint "
                           f"references ({nbytes} bytes)")
    return count, nbytes




def cmd_prune(args: argparse.Namespace) -> int:
    if args.keep is None and args.keep_bytes is None:
        raise CliError("prune: give --keep N, --keep-bytes SIZE or both (what to keep)")
    layout = open_directory(args.directory)
    key = None if args.dry_run else acquire_lock(layout)[0]
    try:
        return prune(layout, args.keep, args.mode, args.dry_run, args.keep_bytes)
    finally:
        if key is not None:
            release_lock(key)


def prune(layout: Layout, keep: int | None, mode: str, dry_run: bool,
          keep_bytes: int | None = None) -> int:
    """Delete the valid checkpoints the keep policy does not keep; never a protected one.

    Only checkpoints that pass verification are counted and considered: a damaged or
    incomplete one is left alone (it may be all that is left of some epoch, and it is
    evidence), and ``--keep N`` keeps N usable ones. Protected (see
    :func:`policy.protected_epochs`): the targets of ``last`` and ``best``, the
    checkpoint a restart would load now (``last``, or the valid one restart falls back
    to when ``last`` is damaged) and the newest valid checkpoint. ``keep`` None: no
    count limit; ``keep_bytes``: then the oldest unprotected of the kept ones go too until
    the kept ones fit in that many bytes.
    """
    last = layout.read_pointer("last")
    best = layout.read_pointer("best")
    for p in (last, best):
        if p.kind != "missing" and p.epoch is None:
            raise CliError(f"refusing to prune: {p.name} ({printable(p.path)}) is broken: "
                           f"{printable(p.problem)}; fix it with '{PROG} rollback' first")
    complete = layout.complete_epochs()
    if not complete:
        print(f"no complete checkpoints in {printable(layout.epochs_dir)}; nothing to prune")
        return EXIT_OK
    if last.epoch is None:
        raise CliError(f"refusing to prune: {printable(layout.last)} is missing, so it is not "
                       f"known which checkpoint a restart needs; set it with '{PROG} "
                       "rollback' first")
    valid = [e for e in complete if is_valid(layout, e)]
    damaged = [e for e in complete if e not in valid]
    restart_from = next((e for e in restart_order(last.epoch, complete) if e in valid), None)
    protected = protected_epochs(last=last.epoch, best=best.epoch, restart_from=restart_from,
                                 newest_valid=max(valid, default=None))
    # Ages and "the newest" count from the checkpoint restart would load: that is where
    # training goes on.
    now = restart_from if restart_from is not None else last.epoch
    if keep is None:
        mode = "all"
    kept = epochs_to_keep(mode, keep or 1, valid, now, best.epoch, protected) if valid else set()
    policy_text = f"{mode}/{keep}" if keep is not None else "all"
    if keep_bytes is not None:
        policy_text += f", at most {human_size(keep_bytes)}"
        candidates = kept & set(valid)
        footprint = Footprint.measure({e: layout.epoch_dir(e) for e in candidates})
        over, used = epochs_over_budget(keep_bytes, candidates, protected, footprint.of)
        kept -= set(over)
        if used > keep_bytes:
            print(f"the budget of {human_size(keep_bytes)} cannot be met: the protected "
                  f"checkpoints occupy {human_size(used)}")
    doomed = [e for e in valid if e not in kept]
    kept_text = ", ".join(map(str, sorted(kept & set(valid)))) or "none"
    restart_text = (f"restart loads {restart_from}" if restart_from is not None
                    else "restart finds no valid checkpoint")
    print(f"keep policy {policy_text} over {len(valid)} valid checkpoint(s): keeping "
          f"{kept_text} (last {last.epoch}"
          + (f", best {best.epoch}" if best.epoch is not None else "")
          + (f"; {restart_text}" if restart_from != last.epoch else "") + ")")
    committer = Committer(layout, lambda message: append_log(layout, message))
    freed = 0
    removed = 0
    failures: list[str] = []
    verb = "would remove" if dry_run else "removed"
    for epoch in doomed:
        size = dir_size(layout.epoch_dir(epoch))
        if not dry_run:
            try:
                committer.delete_epoch(epoch)
            except OSError as err:
                # Go on with the others: each deletion stands alone, and the summary
                # below says which failed.
                failures.append(f"epoch {epoch}: {printable(err.strerror or err)}")
                continue
            append_log(layout, f"prune ({policy_text}): removed {layout.pointer_text(epoch)} "
                               f"({size} bytes)")
        freed += size
        removed += 1
        print(f"{verb} {printable(layout.epoch_dir(epoch))}  ({human_size(size)})")
    shared = _prune_objects(layout, doomed, dry_run)
    if shared is not None:
        count, nbytes = shared
        freed += nbytes
        print(f"{verb} {count} shared object(s) no remaining checkpoint references "
              f"({human_size(nbytes)})")
    what = "would free" if dry_run else "freed"
    print(f"{verb} {removed} checkpoint(s), {what} {human_size(freed)} ({freed:,} bytes)")
    if damaged:
        print(f"left alone: checkpoints that fail verification "
              f"{', '.join(map(str, damaged))} (see '{PROG} verify'; remove them by hand "
              "once you no longer need them)")
    incomplete = [e for e in layout.list_epochs() if e not in complete]
    if incomplete:
        print(f"left alone: incomplete epoch directories {', '.join(map(str, incomplete))} "
              "(not checkpoints; remove them by hand if no run is writing them)")
    if failures:
        raise CliError(f"could not remove {len(failures)} checkpoint(s): "
                       + "; ".join(failures))
    return EXIT_OK
