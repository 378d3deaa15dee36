"""Saving one checkpoint: a frozen SaveRecord -> work/ -> commit -> links -> keep policy.

:class:`Saver` runs the commit protocol (``storage/commit.py``) for a record the engine decided
and a snapshot the backend captured. Everything before ``last`` is replaced can fail
(and then raises :class:`CheckpointWriteError`, ``last`` untouched); ``last``'s
``os.replace`` is the commit point, and what follows it (the keep policy, the log)
never raises: a failed deletion is logged and retried after the next save.

:class:`AsyncSaver` wraps a Saver and runs it on one writer thread, as Lightning's
AsyncCheckpointIO wraps any CheckpointIO; its error surfaces at the next ``wait``
(or, if none comes, on stderr at interpreter exit: ``shutdown.py``).
"""

from __future__ import annotations

import errno
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import shutdown
from .backends.base import Backend
from .coordination import Coordinator, LocalCoordinator, LostContact, StepFailed
from .errors import CheckpointWriteError, CkptError
from .logs import CkptLog, relpath
from .policy import epochs_over_budget, epochs_to_delete, protected_epochs
from .record import SaveRecord, to_info
from .storage.commit import Committer
from .storage.integrity import ChecksumTally
from .storage.layout import INFO_FILE, CkptKey, Layout
from .storage.objects import ObjectStore
from .storage.sink import FileSink
from .storage.usage import Footprint, human_size


@dataclass(frozen=True)
class KeepRule:
    """The keep policy's parameters (``ckpt_keep_mode``, ``ckpt_keep_limit``,
    ``ckpt_keep_bytes``: None for no byte budget)."""

    mode: str
    limit: int
    max_bytes: int | None = None


class Saver:
    """Writes and commits checkpoints into one layout; keeps this run's within the policy.

    One process or many, the same steps (``save``); only rank 0 touches the tree beyond
    its own files in work/, and only rank 0 applies the keep policy.
    """

    def __init__(self, layout: Layout, committer: Committer, backend: Backend, log: CkptLog,
                 keep: KeepRule, coord: Coordinator | None = None,
                 objects: ObjectStore | None = None) -> None:
        self.coord = coord if coord is not None else LocalCoordinator()
        self.objects = objects  # ckpt_dedup: the shared object store of this layout
        self.layout = layout
        self.committer = committer
        self.backend = backend
        self.log = log
        self.keep = keep
        self.run_epochs: list[int] = []  # written by this engine: the keep policy's scope
        self.run_partials: list[CkptKey] = []  # mid-epoch ones: superseded by any later one
        self.resumed_from: int | None = None  # never deleted by the keep policy
        self._over_budget_warned = False  # warned that ckpt_keep_bytes cannot be met
        self.time_saving = 0.0

    # ------------------------------------------------------------------ writing
    def write_work(self, work: Path, record: SaveRecord, snapshot: Any) -> dict[str, Any]:
        """The backend's files, then ckpt-info.json (fsynced) last; returns the info."""
        # (Written outside the tree: its objects would have no checkpoint of the tree
        # naming them, so it is written whole.)
        return self._write_info(work, record, [self._write_files(work, record, snapshot,
                                                                 None)])

    def save(self, record: SaveRecord, snapshot: Any) -> Path:
        """Write, commit and point ``last`` (and ``best``) at the record's epoch.

        The steps, every rank together (see coordination.py): rank 0 creates work/;
        every rank writes its files into it; rank 0 writes ckpt-info.json naming them
        all, renames work/ to epochs/NNN, points best and then last (the commit point).

        Raises:
            CheckpointWriteError: anything failed before the commit point, on any rank
                (every rank raises); ``last`` and every earlier checkpoint are untouched.
        """
        coord, epoch, work = self.coord, record.epoch, self.layout.work
        start = time.perf_counter()
        try:
            coord.step(f"creating {work}", self._new_work, writer_only=True, pending=snapshot)
            outcomes = coord.step(f"writing its files into {work}",
                                  lambda: self._write_files(work, record, snapshot,
                                                            self.objects))
            coord.step("committing", lambda: self._commit(record, outcomes), writer_only=True)
        except (StepFailed, LostContact) as err:
            self._discard_work()
            if isinstance(err, StepFailed):
                message = (f"saving epoch {epoch} failed on {err.message}; no rank committed "
                           "it: earlier checkpoints and 'last' are untouched")
            else:
                message = (f"saving epoch {epoch}: {err}; the checkpoint is not committed: "
                           "earlier checkpoints and 'last' are untouched")
            if coord.is_writer or isinstance(err, LostContact):
                self.log.warning(message)
            raise CheckpointWriteError(getattr(err, "errno", 0), message) from None
        except OSError as err:
            self._discard_work()
            if isinstance(err, CkptError):
                raise
            raise CheckpointWriteError(
                err.errno,
                f"saving epoch {epoch} into {work} failed: {err.strerror or err}; "
                "earlier checkpoints and 'last' are untouched",
                err.filename,
            ) from err
        except BaseException:
            self._discard_work()
            raise
        directory = self.layout.epoch_dir(epoch, record.batch)
        elapsed = time.perf_counter() - start
        if coord.is_writer:
            self._committed(record, directory, elapsed)
        else:
            self.time_saving += elapsed
        return directory

    def _new_work(self) -> None:
        self.finish_deletions()  # the space of the last save's deletions is free first
        self.committer.new_work()

    def _discard_work(self) -> None:
        if self.coord.is_writer:
            shutil.rmtree(self.layout.work, ignore_errors=True)

    def _write_files(self, work: Path, record: SaveRecord, snapshot: Any,
                     objects: ObjectStore | None) -> dict[str, Any]:
        """This process's files of the checkpoint, written and fsynced: their manifest
        (and the shared objects it references, durable too)."""
        tally = ChecksumTally()
        sink = FileSink(work, record.checksum_algorithm, tally, objects)
        start = time.perf_counter()
        before = objects.written_bytes if objects is not None else 0
        written = self.backend.write(snapshot, sink)
        files = sink.finish()
        return {"written": written, "files": files, "tally": tally,
                "objects": sink.references if objects is not None else None,
                "object_bytes": (objects.written_bytes - before) if objects is not None else 0,
                "seconds": time.perf_counter() - start}

    def _write_info(self, work: Path, record: SaveRecord,
                    outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        """ckpt-info.json naming every process's files, written last and fsynced."""
        files: dict[str, Any] = {}
        references: dict[str, Any] | None = None  # None: written without ckpt_dedup
        for outcome in outcomes:
            if outcome.get("objects") is not None:
                references = {**(references or {}), **outcome["objects"]}
        for rank, outcome in enumerate(outcomes):
            clash = set(files) & set(outcome["files"])
            if clash:
                raise CheckpointWriteError(
                    errno.EEXIST, f"rank {rank} wrote {sorted(clash)}, which another rank "
                    "wrote too; each rank must write files of its own")
            files.update(outcome["files"])
        written = outcomes[0]["written"]
        if written.model_file not in files:
            raise CheckpointWriteError(
                0, f"backend reported model file {written.model_file!r} that it did not write"
            )
        # The ranks wrote side by side: all their bytes, in the time of the slowest.
        self.report_written(files, max(o["seconds"] for o in outcomes),
                            ChecksumTally.parallel(o["tally"] for o in outcomes),
                            sum(o.get("object_bytes", 0) for o in outcomes))
        info = to_info(record, written, dict(sorted(files.items())),
                       None if references is None else dict(sorted(references.items())))
        self.committer.write_info(work / INFO_FILE, info)
        return info

    def report_written(self, files: dict[str, Any], seconds: float,
                       tally: ChecksumTally, object_bytes: int = 0) -> None:
        """The original's lines for a save's files: ``model wrote:``, ``checksummed:``.

        ``seconds``: from the backend's first write to every file fsynced; checksums
        computed on the way are in it (and, alone, in the ``checksummed:`` line).
        ``object_bytes``: the shared objects (``ckpt_dedup``) this save wrote (not those
        it references without writing).
        """
        self.log.model_wrote(sum(f["size"] for f in files.values()) + object_bytes, seconds)
        if tally.files:
            self.log.checksummed(tally.nbytes, tally.seconds)

    def _commit(self, record: SaveRecord, outcomes: list[dict[str, Any]]) -> None:
        """Rank 0: ckpt-info.json, rename to epochs/NNN, best, then last (the commit point)."""
        self._write_info(self.layout.work, record, outcomes)
        self.committer.publish(record.epoch, self.layout.work, record.batch)
        if not record.batch:  # a mid-epoch checkpoint is never the best
            self._point_best(record)
        self.committer.point("last", record.epoch, record.batch)  # the commit point

    def _point_best(self, record: SaveRecord) -> None:
        if record.is_best:
            self.committer.point("best", record.epoch)
            self.log.debug(f"linked best -> {self.layout.pointer_text(record.epoch)}")
        elif record.epoch_best is not None and not self.layout.read_pointer("best").ok \
                and self.layout.is_complete(record.epoch_best):
            # best was removed (its epoch re-done) or is missing: point it back at ours.
            self.committer.point("best", record.epoch_best)

    def _committed(self, record: SaveRecord, directory: Path, elapsed: float) -> None:
        """After the commit point: bookkeeping, log, keep policy. Never raises."""
        try:
            key = CkptKey(record.epoch, record.batch)
            self.time_saving += elapsed
            what = f"epoch {record.epoch}" if not key.partial else \
                f"epoch {record.epoch} + {record.batch} batches (mid-epoch)"
            self.log.info(f"{what}: saved {relpath(directory)} in {elapsed:.3f}s"
                          + (" (best)" if record.is_best else "")
                          + (f" ({record.reason})" if record.reason else ""))
            if key.partial:
                if key not in self.run_partials:
                    self.run_partials.append(key)
            else:
                if record.epoch in self.run_epochs:
                    self.run_epochs.remove(record.epoch)
                self.run_epochs.append(record.epoch)
            # The files of what is deleted are removed on the remover's thread: the
            # training thread goes on once they are unlisted.
            self.drop_superseded(key, background=True)
            if not key.partial:
                self.clean(record.epoch, record.epoch_best, background=True)
            # unlisted earlier but not removed: retried on the remover's thread too
            self.committer.purge_deletions(background=True)
            # then the shared objects only the deleted ones referenced (or a crash left)
            self.committer.collect_objects(background=True)
        except Exception as err:  # the checkpoint is committed: report, never undo
            self.log.warning(f"epoch {record.epoch} is committed, but what follows failed: "
                       f"{type(err).__name__}: {err}; retried after the next save")

    # ------------------------------------------------------------------ keep policy
    def protected(self) -> set[int]:
        """Never deleted by the keep policy: the targets of last and best, the resumed one."""
        return protected_epochs(last=self.layout.read_pointer("last").epoch,
                                best=self.layout.read_pointer("best").epoch,
                                restart_from=self.resumed_from)

    def finish_deletions(self) -> None:
        """Wait for the background removal of deleted checkpoints; log what failed."""
        for failed in self.committer.remover.wait():
            self.log.warning(f"{failed}; retried after the next save")

    def drop_superseded(self, newest: CkptKey, background: bool = False) -> None:
        """Delete this run's mid-epoch checkpoints older than ``newest`` (not protected)."""
        protected = self._protected_keys()
        for key in sorted(self.run_partials):
            if key >= newest or key in protected:
                continue
            try:
                self.committer.delete_epoch(key.epoch, key.batch, background)
            except OSError as err:
                self.log.warning(f"could not delete superseded {key.name}: {err}; "
                           "it is tried again after the next save")
                continue
            self.run_partials.remove(key)

    def _protected_keys(self) -> set[CkptKey]:
        keys = set()
        for name in ("last", "best"):
            key = self.layout.read_pointer(name).key
            if key is not None:
                keys.add(key)
        return keys

    def clean(self, epoch_now: int, epoch_best: int | None, background: bool = False
              ) -> tuple[int, int]:
        """Delete this run's old checkpoints per the keep policy; (kept, deleted).

        A deletion that fails is logged; the epoch stays in this run's list, so the
        next save's clean tries it again.
        """
        protected = self.protected()
        doomed = epochs_to_delete(self.keep.mode, self.keep.limit, self.run_epochs,
                                  epoch_now, epoch_best, protected)
        if self.keep.max_bytes is not None:
            doomed += self._over_budget(self.keep.max_bytes, set(self.run_epochs) - set(doomed),
                                        protected | {epoch_now})
        deleted = 0
        for epoch in doomed:
            if self.delete(epoch, background):
                deleted += 1
        return len(self.run_epochs), deleted

    def _over_budget(self, budget: int, remaining: set[int], protected: set[int]
                     ) -> list[int]:
        """The oldest unprotected of ``remaining`` to delete so they fit in ``budget``."""
        footprint = Footprint.measure({e: self.layout.epoch_dir(e) for e in remaining})
        doomed, used = epochs_over_budget(budget, remaining, protected, footprint.of)
        limit = f"ckpt_keep_bytes={human_size(budget)}"
        if doomed:
            self.log.info(f"{limit}: deleting epoch{'s' if len(doomed) > 1 else ''} "
                          f"{', '.join(map(str, doomed))} to fit this run's checkpoints "
                          f"in the budget (now {human_size(used)})")
        if used > budget:
            kept = sorted(remaining - set(doomed))
            message = (f"{limit} cannot be met: this run's checkpoints that may not be "
                       f"deleted (last, best, the one resumed from: epochs "
                       f"{', '.join(map(str, kept))}) occupy {human_size(used)}")
            if not self._over_budget_warned:
                self._over_budget_warned = True
                self.log.warning(message)
            else:
                self.log.debug(message)
        else:
            self._over_budget_warned = False
        return doomed

    def delete(self, epoch: int, background: bool = False) -> bool:
        """Delete one checkpoint of this run; False (logged) when the filesystem refuses."""
        self.log.debug(f"deleting epoch {epoch} (keep policy {self.keep.mode}/{self.keep.limit})")
        try:
            self.committer.delete_epoch(epoch, background=background)
        except OSError as err:
            self.log.warning(f"could not delete epoch {epoch} (keep policy): {err}; "
                       "it is tried again after the next save")
            return False
        if epoch in self.run_epochs:
            self.run_epochs.remove(epoch)
        return True



class AsyncSaver:
    """Runs a :class:`Saver` on one writer thread; at most one save in flight.

    At interpreter exit and on SIGTERM a save in flight is finished (``shutdown.py``).
    """

    def __init__(self, saver: Saver, log: CkptLog) -> None:
        self.saver = saver
        self.log = log
        self._thread: threading.Thread | None = None
        self._record: SaveRecord | None = None
        self._error: BaseException | None = None
        shutdown.register(self)

    @property
    def pending(self) -> SaveRecord | None:
        """The record of the save in flight (or finished but not yet waited for)."""
        return self._record

    def submit(self, record: SaveRecord, snapshot: Any) -> None:
        """Start saving ``snapshot`` (a host copy: training may change the live state)."""
        if self._thread is not None:
            raise RuntimeError("AsyncSaver.submit: a save is still in flight; wait() first")
        self._record, self._error = record, None

        def write() -> None:
            try:
                self.saver.save(record, snapshot)
            except BaseException as err:  # reported by the next wait()
                self._error = err
                self.log.warning(f"epoch {record.epoch}: background save failed: {err}")
            finally:
                shutdown.save_ended(thread)

        # Not a daemon: interpreter exit waits for the checkpoint to become durable.
        thread = threading.Thread(target=write, name=f"candle-ckpt-save-{record.epoch}")
        shutdown.save_started(thread)
        try:
            thread.start()
        except BaseException:
            shutdown.save_ended(thread)
            self._record = None
            raise
        self._thread = thread

    def wait(self) -> SaveRecord | None:
        """Wait for the save in flight; the committed record, None if there was none.

        Raises:
            CheckpointWriteError: the save failed (earlier checkpoints and ``last`` are
                untouched).
        """
        thread = self._thread
        if thread is None:
            return None
        thread.join()
        shutdown.settle()  # a SIGTERM deferred for the save ends the process here
        record, err = self._record, self._error
        self._thread, self._record, self._error = None, None, None
        if err is None:
            return record
        assert record is not None
        raise _failure(record, err)

    def failure(self) -> str | None:
        """The failure of the save that ended, if no wait() has raised it yet."""
        record, err = self._record, self._error
        return None if record is None or err is None else str(_failure(record, err))

    def wait_at_exit(self) -> str | None:
        """Wait for the save in flight; its failure, if no wait() had raised it."""
        try:
            self.wait()
        except Exception as err:
            return str(err)
        return None


def _failure(record: SaveRecord, err: BaseException) -> CkptError:
    if isinstance(err, CkptError):
        return err
    failure = CheckpointWriteError(
        getattr(err, "errno", None) or 0,
        f"background save of epoch {record.epoch} failed: {type(err).__name__}: {err}; "
        "earlier checkpoints and 'last' are untouched",
    )
    failure.__cause__ = err
    return failure
