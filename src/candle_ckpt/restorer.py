"""Restart: find ``last`` (both layouts), validate, fall back, and only then load.

All restart I/O is here. A checkpoint is checked whole (ckpt-info.json, manifest,
sizes, checksums, then the backend's own check of every tensor against the live model)
before anything live changes. Two kinds of failure are kept apart:

- *damaged* (missing/truncated file, bad checksum, unparsable metadata): skipped, and
  the newest older complete checkpoint is tried, as the log and ``J["skipped"]`` say;
- *incompatible* (another architecture or optimizer): :class:`CheckpointMismatchError`
  at once; nothing is loaded, and "auto" does not start from scratch over the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .backends.base import Backend, Restored
from .coordination import Coordinator, LocalCoordinator
from .errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CkptError,
    CkptParamError,
)
from .logs import CkptLog, relpath
from .policy import restart_order
from .record import InfoRecord, read_record
from .storage.integrity import ChecksumTally, check_checkpoint, has_checksums
from .storage.layout import CkptKey, Layout, Pointer


@dataclass(frozen=True)
class Located:
    """Where restart would start: the layout, the epoch ``last`` names, or why none."""

    layout: Layout | None
    epoch: int | None
    why: str
    batch: int = 0  # > 0: ``last`` names a mid-epoch checkpoint


@dataclass(frozen=True)
class BestSoFar:
    """The best metric a checkpoint records (its epoch from the link for the original's)."""

    value: float | None
    epoch: int | None


@dataclass(frozen=True)
class RestartResult:
    """A successful restart: the info dict returned to the user and what it restored."""

    J: dict[str, Any]
    epoch: int
    directory: Path
    best: BestSoFar
    batch: int = 0


class Restorer:
    """Restarts one ckpt_directory (either layout) into a backend's live objects."""

    def __init__(self, root: Path, mode: str, check_checksums: bool, log: CkptLog,
                 coord: Coordinator | None = None) -> None:
        self.coord = coord if coord is not None else LocalCoordinator()
        self.root = root
        self.mode = mode
        self.check_checksums = check_checksums
        self.log = log

    # ------------------------------------------------------------------ finding last
    def locate(self, announce: bool = True) -> Located:
        """Resolve ``last``.

        Raises:
            CheckpointCorruptError: ``last`` escapes the tree, or is a plain directory or
                file that names no checkpoint (restart refuses to guess).
        """
        root = self.root
        layout = Layout.for_restart(root)
        if layout is None:
            return Located(None, None, f"no 'last' in {root}/ckpts or {root}")
        p = layout.read_pointer("last")
        if _refused(p):
            raise CheckpointCorruptError(
                f"{p.path}: {p.problem}; refusing to load it. Point it at a checkpoint with "
                f"'candle-ckpt rollback {root} EPOCH'"
            )
        if p.epoch is None:
            return Located(layout, None, f"{p.path}: {p.problem}")
        if p.reanchored and announce:
            self.log.info(f"{p.path} -> {p.raw} dangles (the tree was moved); re-anchored to "
                          f"{layout.epoch_dir(p.epoch)}")
        return Located(layout, p.epoch, "ok", p.batch)

    def peek_best(self) -> BestSoFar | None:
        """The best so far per the checkpoint restart would use; None if unknown. No log."""
        try:
            where = self.locate(announce=False)
            if where.layout is None or where.epoch is None:
                return None
            info = where.layout.read_info(where.epoch, where.batch)
            return _best_of(where.layout, info, read_record(info))
        except (CkptError, OSError, ValueError, RecursionError):
            return None

    # ------------------------------------------------------------------ restart
    def restart(self, backend: Backend, verbose: bool = True) -> RestartResult | None:
        """Load the newest valid checkpoint into ``backend``'s live objects.

        One process or many, the same steps: rank 0 resolves ``last`` and checks each
        candidate's files, sizes and checksums (every rank's files are in its manifest);
        then every rank checks its share against its live objects; only when all can is
        it applied, on every rank. Damage on any rank skips the checkpoint on all of them
        (falling back to an older one); an error is raised on every rank alike.

        Returns None (mode "auto") when there is nothing to restart from.

        Raises:
            CheckpointNotFoundError: mode "required" and no usable checkpoint.
            CheckpointCorruptError: ``last`` escapes the tree or is not a link.
            CheckpointMismatchError: the checkpoint does not fit the model/optimizer.
        """
        coord = self.coord
        where, candidates = coord.on_writer(self._plan)
        skipped: list[dict[str, Any]] = []
        for key in candidates:
            layout = where.layout
            assert layout is not None
            directory = layout.epoch_dir(key.epoch, key.batch)
            checked = coord.on_writer(partial(self.check, layout, key))
            if isinstance(checked, str):
                self._skip(skipped, key, directory, checked)
                continue
            info, best = checked
            restored, outcome = self._load(backend, directory, info, coord)
            outcomes = coord.all_gather(outcome)
            stop = next((o[1] for o in outcomes if o is not None and o[0] == "stop"), None)
            if stop is not None:
                raise stop  # incompatible or misused: nothing was changed, on any rank
            damaged = [o[1] for o in outcomes if o is not None]
            if damaged:
                self._skip(skipped, key, directory, "; ".join(damaged))
                continue
            assert restored is not None
            for note in restored.notes:
                self.log.info(note)
            for note in restored.apply():
                self.log.warning(note)
            self.log.restarting_from_epoch(key.epoch)  # J["epoch"]: the initial_epoch
            if verbose:
                ranks = coord.describe()
                self.log.info(f"restarted from {relpath(directory)} ({where_in(key)}; "
                              + (f"{ranks}; " if ranks else "")
                              + f"best={best.value} at epoch {best.epoch})")
            return restart_result(info, key, directory, best, skipped)
        why = where.why if not candidates else "every checkpoint failed validation"
        coord.on_writer(lambda: self._none_usable(why, skipped))
        return None

    def _plan(self) -> tuple[Located, list[CkptKey]]:
        where = self.locate()
        return where, self.candidates(where)

    def _skip(self, skipped: list[dict[str, Any]], key: CkptKey, directory: Path,
              why: str) -> None:
        skipped.append({"epoch": key.epoch, "batch": key.batch, "path": str(directory),
                        "reason": why})
        self.log.warning(f"skipping {directory}: {why}")

    @staticmethod
    def _load(backend: Backend, directory: Path, info: dict[str, Any], coord: Coordinator
              ) -> tuple[Restored | None, tuple[str, Any] | None]:
        """This process's check of its share: (ready to apply, None) or (None, why not)."""
        try:
            return backend.load(directory, info), None
        except (CheckpointMismatchError, CkptParamError) as err:
            return None, ("stop", err)  # incompatible or misused: every rank stops
        except Exception as err:  # a framework refusing the file is damage to us
            # Our own errors say what they found; a framework's, what it is, too.
            what = str(err) if isinstance(err, CkptError) else f"{type(err).__name__}: {err}"
            return None, ("damaged", coord.blame(f"loading failed: {what}"))

    def candidates(self, where: Located) -> list[CkptKey]:
        """The checkpoints to try, in order: the one ``last`` names, then older complete ones."""
        if where.layout is None or where.epoch is None:
            return []
        return restart_order(CkptKey(where.epoch, where.batch), where.layout.complete_keys())

    def check(self, layout: Layout, key: CkptKey) -> str | tuple[dict[str, Any], BestSoFar]:
        """Check one checkpoint's files and metadata (not the backend's); why not, if not."""
        directory = layout.epoch_dir(key.epoch, key.batch)
        tally = ChecksumTally()
        info, problems = check_checkpoint(directory, key.epoch, self.check_checksums, tally)
        if tally.files:
            self.log.checksummed(tally.nbytes, tally.seconds)
        if info is None or problems:
            return "; ".join(problems)
        try:
            record = read_record(info)
        except ValueError as err:
            return f"ckpt-info.json: {err}"
        if record.batch != key.batch:
            return f"ckpt-info.json: says batch {record.batch}, its directory is {key.name}"
        if self.check_checksums and not has_checksums(info):
            self.log.warning(f"{directory} was written without checksums; verified sizes only")
        return info, _best_of(layout, info, record)

    def _none_usable(self, why: str, skipped: list[dict[str, Any]]) -> None:
        """Nothing to restart from: log what exists; raise under mode "required"."""
        root = self.root
        complete = sorted(set(Layout.ours(root).complete_epochs())
                          | set(Layout.flat(root).complete_epochs()))
        listing = ", ".join(map(str, complete)) if complete else "none"
        message = (f"no checkpoint to restart from ({why}); complete checkpoints on disk: "
                   f"{listing}")
        if complete:
            message += (f". To resume from one, run 'candle-ckpt rollback {root} EPOCH' "
                        "(or re-link ckpts/last to epochs/NNN) and restart")
        if self.mode == "required":
            self.log.warning(message)
            raise CheckpointNotFoundError(
                f"ckpt_restart_mode='required' but {message}"
                + ("; skipped: " + "; ".join(f"epoch {s['epoch']}: {s['reason']}"
                                             for s in skipped) if skipped else "")
            )
        self.log.info(message + "; starting from scratch")


def where_in(key: CkptKey) -> str:
    """How a log line names the checkpoint restarted from."""
    return f"epoch {key.epoch}" + (
        f" + {key.batch} batches of the next (mid-epoch)" if key.partial else "")


def restart_result(info: dict[str, Any], key: CkptKey, directory: Path, best: BestSoFar,
                   skipped: list[dict[str, Any]]) -> RestartResult:
    """The result of loading ``key``: its info plus where it came from and what was skipped."""
    J = dict(info)
    J["epoch"] = key.epoch
    J["batch"] = key.batch  # always present: 0 for an epoch-end checkpoint
    J["restarted_from"] = str(directory)
    J["skipped"] = skipped
    return RestartResult(J, key.epoch, directory, best, key.batch)


def _refused(p: Pointer) -> bool:
    """A ``last`` restart must not use or guess from (anything but missing/dangling)."""
    problem = p.problem or ""
    if problem.startswith("escapes"):
        return True
    return p.kind in ("directory", "other", "file") and p.epoch is None \
        and not problem.startswith("dangling")


def _best_of(layout: Layout, info: dict[str, Any], record: InfoRecord) -> BestSoFar:
    epoch_best = record.epoch_best
    if epoch_best is None and record.original_candle:
        epoch_best = layout.read_pointer("best").epoch  # the original kept it in the link
    return BestSoFar(record.best_metric_last, epoch_best)
