"""The commit protocol: work dir, fsync, rename, atomic relative links.

A kill -9 between any two steps leaves a tree from which restart resumes from the
checkpoint ``last`` points to; ``last`` is moved only by ``os.replace``, so it is never
missing. Steps call :func:`~candle_ckpt.storage.fsio.step` with their name so tests can
crash exactly there.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import (
    CheckpointDeleteError,
    CheckpointWriteError,
)
from . import objects, remover
from .fsio import fsync_dir, step, write_json_durable
from .layout import (
    _ASIDE_PREFIX,
    _DELETING_PREFIX,
    CkptKey,
    Layout,
    is_real_dir,
    parse_epoch,
)
from .remover import Remover, delete_error
from .safeio import create_exclusive, display_path, printable


class Committer:
    """Applies the commit protocol to one :class:`Layout` (always ours when writing)."""

    def __init__(self, layout: Layout, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.log = log
        self.remover = Remover()

    def recover(self) -> None:
        """Clean what a crash may have left: a stale work/, asides, half-deleted dirs.

        Never raises for what it cannot remove (an NFS ``.nfs*`` file, a read-only
        entry): it says so in the log; the next save raises if work/ is still in the way.
        """
        work = self.layout.work
        if os.path.lexists(work):
            self.log(f"removing stale work directory {display_path(work)} left by an "
                     "interrupted save")
            self._try_remove(work)
        for path in self.layout.leftovers():
            name = path.name
            if name.startswith(_ASIDE_PREFIX):
                epoch = parse_epoch(name[len(_ASIDE_PREFIX):].split(".")[0])
                if epoch is not None and not os.path.lexists(self.layout.epoch_dir(epoch)) \
                        and is_real_dir(path):
                    # Crash between move-aside and rename: put the old checkpoint back.
                    try:
                        os.rename(path, self.layout.epoch_dir(epoch))
                    except OSError as err:
                        self.log(f"could not restore {display_path(path)} moved aside by a "
                                 f"crash: {printable(err)}")
                        continue
                    self.log(f"restored {display_path(self.layout.epoch_dir(epoch))} moved "
                             "aside by a crash")
                    continue
            self.log(f"removing leftover {display_path(path)}")
            self._try_remove(path)
        for name in ("last", "best"):
            for tmp in self.layout.base.glob(f".{name}.tmp-*"):
                self._try_remove(tmp)
        if is_real_dir(self.layout.epochs_dir):
            try:
                fsync_dir(self.layout.epochs_dir)
            except OSError as err:
                self.log(f"fsync of {display_path(self.layout.epochs_dir)} failed: "
                         f"{printable(err)}")

    def _try_remove(self, path: Path) -> None:
        try:
            remover.rmtree(path)
        except OSError as err:
            self.log(f"could not remove {display_path(path)}: {printable(err)}; it is "
                     "retried by the next engine on this directory")

    def purge_deletions(self, background: bool = False) -> list[CheckpointDeleteError]:
        """Retry removing checkpoints the keep policy unlisted but could not remove.

        ``.deleting-*`` entries in ``epochs/`` are no longer checkpoints (restart never
        sees them); this only frees their space. Returns what still failed (never raises).
        With ``background`` they are handed to :attr:`remover` (what it fails on is
        reported by its ``wait()``), except those it has already.
        """
        failed: list[CheckpointDeleteError] = []
        if not background:
            self.remover.wait()  # never two removals of one directory at once
        for path in self.layout.leftovers():
            if not path.name.startswith(_DELETING_PREFIX):
                continue
            what = f"removing {display_path(path)} (a checkpoint already unlisted) failed"
            if background:
                self.remover.submit(path, what)
                continue
            try:
                remover.rmtree(path)
            except OSError as err:
                failed.append(delete_error(err, what, path))
        return failed

    def collect_objects(self, background: bool = False) -> None:
        """Delete the shared objects (``ckpt_dedup``) no checkpoint references any more.

        After the keep policy's deletions (on :attr:`remover`'s thread with
        ``background``, after them). Never raises: what fails is logged (and, in the
        background, reported by ``remover.wait()``); the next collection retries.
        """
        store = self.layout.base / objects.OBJECTS_DIR
        if not is_real_dir(store):
            return

        def run() -> None:
            count, freed, why = objects.collect(self.layout)
            if why is not None:
                self.log(f"shared objects not collected: {why}")
            elif count:
                self.log(f"removed {count} shared object(s) no checkpoint references "
                         f"({freed / 1e6:.3f} MB)")

        if background:
            self.remover.submit(store, "removing unreferenced shared objects failed", run)
            return
        self.remover.wait()
        try:
            run()
        except OSError as err:
            self.log(f"removing unreferenced shared objects failed: {printable(err)}; "
                     "retried after the next save")

    def new_work(self) -> Path:
        work = self.layout.work
        if os.path.lexists(work):
            remover.rmtree(work)
        self.layout.epochs_dir.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        fsync_dir(self.layout.base)
        step("work-created")
        return work

    def write_info(self, path: Path, info: dict[str, Any]) -> None:
        write_json_durable(path, info)
        step("info-written")

    def publish(self, epoch: int, work: Path, batch: int = 0) -> Path:
        """Rename work/ to epochs/NNN (or NNN+BBBBBB), moving an existing one aside first."""
        target = self.layout.epoch_dir(epoch, batch)
        aside: Path | None = None
        if os.path.lexists(target):
            self._unpoint_redone(epoch, batch)
            aside = self.layout.epochs_dir / f"{_ASIDE_PREFIX}{target.name}"
            if os.path.lexists(aside):
                remover.rmtree(aside)
            os.rename(target, aside)
            self.log(f"moved aside {display_path(target)} (epoch {epoch} is being re-done)")
            step("aside-moved")
        os.rename(work, target)
        step("renamed")
        fsync_dir(self.layout.epochs_dir)
        step("epochs-synced")
        if aside is not None:
            # The new checkpoint is in place: failing to free the old one's space is not a
            # failed save. recover() (next engine) removes the aside.
            try:
                remover.rmtree(aside)
            except OSError as err:
                self.log(f"could not remove {display_path(aside)}: {printable(err)}; the "
                         "next engine on this directory retries")
            step("aside-deleted")
        return target

    def _unpoint_redone(self, epoch: int, batch: int = 0) -> None:
        """``last`` must never point at a directory being moved aside."""
        key = CkptKey(epoch, batch)
        for name in ("last", "best"):
            p = self.layout.read_pointer(name)
            if p.key != key:
                continue
            if name == "best":
                self.remove_pointer("best")
                continue
            older = [k for k in self.layout.complete_keys() if k < key]
            if older:
                self.point("last", older[-1].epoch, older[-1].batch)
                self.log(f"re-pointed last at {older[-1].name} while {key.name} is re-done")
            else:
                self.remove_pointer("last")
                self.log(f"removed last (pointed at epoch {epoch}, which is being re-done)")

    def point(self, name: str, epoch: int, batch: int = 0) -> None:
        """Atomically point ``last``/``best`` at epochs/NNN with a relative link."""
        base = self.layout.base
        rel = self.layout.pointer_text(epoch, batch)
        tmp = base / f".{name}.tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            tmp.unlink()
        try:
            os.symlink(rel, tmp)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # Filesystems without symlinks: a small text file holding the same path.
            with os.fdopen(create_exclusive(tmp), "w", encoding="utf-8") as f:
                f.write(rel + "\n")
                f.flush()
                os.fsync(f.fileno())
        existing = base / name
        if is_real_dir(existing):
            os.unlink(tmp)
            raise CheckpointWriteError(
                errno.EISDIR,
                f"{display_path(existing)} is a plain directory where a link belongs; move "
                "it away (candle-ckpt will not delete it)",
                str(existing),
            )
        os.replace(tmp, existing)
        # The link is in place (for last, the commit point): a failing directory fsync
        # must not turn a committed save into a failed one. Durability is then the
        # filesystem's; say so.
        try:
            fsync_dir(base)
        except OSError as err:
            self.log(f"{name} -> {rel} is in place, but fsync of {display_path(base)} "
                     f"failed: {printable(err)}")
        step(f"{name}-linked")

    def remove_pointer(self, name: str) -> None:
        path = self.layout.base / name
        if os.path.lexists(path) and not is_real_dir(path):
            path.unlink()
            fsync_dir(self.layout.base)

    def delete_epoch(self, epoch: int, batch: int = 0, background: bool = False) -> None:
        """Delete a checkpoint: rename first so a crash never leaves half of one listed.

        With ``background`` the renamed directory's files are removed by
        :attr:`remover`'s thread (freeing a GB-sized file takes a quarter of a second
        on ext4): the checkpoint is unlisted when this returns, its space is free once
        ``remover.wait()`` returns (each save waits for it before writing).

        Raises:
            CheckpointDeleteError: the rename failed (EBUSY, EPERM, EACCES, ``chattr +i``:
                the checkpoint stays listed and intact), or it was unlisted but its
                files could not all be removed (ENOTEMPTY from NFS ``.nfs*`` files of
                open descriptors ...: :meth:`purge_deletions` retries). Only ever called
                after the commit point: the caller logs it and carries on.
        """
        target = self.layout.epoch_dir(epoch, batch)
        if not os.path.lexists(target):
            return
        # A unique name: a stuck earlier deletion of the same epoch must not block this one.
        doomed = self.layout.epochs_dir / (
            f"{_DELETING_PREFIX}{target.name}.{os.getpid()}.{next(_deletions)}")
        try:
            os.rename(target, doomed)
        except OSError as err:
            raise delete_error(err, f"keep policy: deleting epoch {epoch} failed; "
                                f"{display_path(target)} stays in place (still a valid "
                                "checkpoint)", target) from err
        try:
            fsync_dir(self.layout.epochs_dir)
        except OSError as err:
            self.log(f"fsync of {display_path(self.layout.epochs_dir)} failed: "
                     f"{printable(err)}")
        step("epoch-unlisted")
        if background:
            self.remover.submit(doomed, f"keep policy: epoch {epoch} is unlisted (renamed to "
                                f"{display_path(doomed)}) but not all of it could be removed")
            return
        try:
            remover.rmtree(doomed)
        except OSError as err:
            raise delete_error(err, f"keep policy: epoch {epoch} is unlisted (renamed to "
                                f"{display_path(doomed)}) but not all of it could be "
                                "removed; purge_deletions() retries", doomed) from err
        step("epoch-deleted")


_deletions = itertools.count(1)
