"""CandleCkpt: the CANDLE checkpoint API, a thin facade over the parts that do the work.

``params`` validates the hyperparameters, ``policy`` decides (save? best? keep?), a
``Saver`` (``AsyncSaver`` with ``ckpt_async``) writes and commits a frozen
``SaveRecord``, a ``Restorer`` finds, validates and loads, and a backend (the protocol
in ``backend.py``) captures, writes and loads the framework's state. Every method name
of the spec is here, each delegating; the engine never calls its own overridable spec
methods, so a user subclass overriding one cannot change how saving works.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import params as _params
from . import shutdown
from .backend import Backend, NoBackend
from .commit import Committer, WriterLock, acquire_writer_lock
from .coordination import Coordinator, LocalCoordinator
from .errors import CkptError, CkptParamError
from .integrity import DEFAULT_ALGORITHM
from .layout import CkptKey, Layout, recorded_metrics
from .logs import CkptLog, check_logger, relpath
from .policy import BestTracker, best_among, best_direction, should_save
from .preempt import Preemption
from .record import SaveRecord
from .restorer import Restorer
from .saver import AsyncSaver, KeepRule, Saver
from .spec import SpecMethods, _metric, read_info_json

__all__ = ["CandleCkpt", "read_info_json"]


class CandleCkpt(SpecMethods):
    """Checkpoint/restart engine configured by CANDLE hyperparameters.

    Args:
        gParameters: dict or argparse.Namespace with the ``ckpt_*`` keys and ``epochs``.
        logger: "DEFAULT" (console), None (no console) or a ``logging.Logger``.
            Every operation is also appended to ``<ckpt_directory>/ckpt.log``.
        verbose: console verbosity of the default logger.

    Raises:
        CkptParamError: a hyperparameter is invalid (nothing is written then).
    """

    backend_name = "none"
    _quiet_start = False

    def __init__(self, gParameters: Any = None, logger: Any = "DEFAULT", verbose: bool = True):
        self.verbose = verbose
        self.scan_params(gParameters)
        check_logger(logger)  # before the directory is created: a bad argument writes nothing
        self._preempt = Preemption(self.settings)  # parses ckpt_signals, ckpt_walltime_end
        # Multi-process: only rank 0 (the writer) touches the tree; see coordination.py.
        self._coord: Coordinator = self._new_coordinator()
        self._writer = self._coord.is_writer
        if self._writer:
            _make_directory(self.settings.directory, self.settings.directory_source)
        self.layout = Layout.ours(self.settings.directory)
        self._log = self._preempt.log = CkptLog(
            self.layout.log_file if self._writer else None, logger, verbose)
        for warning in [] if self._quiet_start else _params.unknown_key_warnings(gParameters):
            self._log.warning(warning)
        self.backend: Backend = self._new_backend()
        self.direction = best_direction(self.save_best_metric, self.settings.save_best_mode)
        self._best = BestTracker(self.direction.sign, self.settings.best_metric_last)
        self.committer = Committer(self.layout, self._log.info)
        keep = KeepRule(self.keep_mode, self.keep_limit)
        self._saver = Saver(self.layout, self.committer, self.backend, self._log, keep,
                            self._coord)
        self._async = AsyncSaver(self._saver) if self.settings.async_save else None
        self._restorer = Restorer(self.settings.directory, self.restart_mode,
                                  self.checksum_enabled, self._log, self._coord)
        self._time_last: float | None = None
        self.restart_info: dict[str, Any] | None = None
        self._lock: WriterLock | None = None
        self._ensure_lock()
        try:
            if self.restart_mode != "off" and self.settings.best_metric_last is None:
                peeked = self._coord.broadcast(
                    self._restorer.peek_best() if self._writer else None)
                if peeked is not None:
                    self._best = BestTracker(self.direction.sign, peeked.value, peeked.epoch)
            self._report_start()
        except BaseException:  # a constructor that fails must not keep the directory
            self.close()
            raise

    def _new_backend(self) -> Backend:
        """The backend of this engine (backends' public classes return theirs)."""
        return NoBackend()

    def _new_coordinator(self) -> Coordinator:
        """The processes checkpointing together (backends that support many return theirs)."""
        return LocalCoordinator()

    # ----------------------------------------------------------------- parameters
    def scan_params(self, gParams: Any) -> None:
        """Simply translate gParameters into instance fields (validating every one)."""
        self.gParams = gParams
        s = self.settings = _params.read_settings(gParams)
        self.restart_mode, self.save_best = s.restart_mode, s.save_best
        self.save_best_metric, self.skip_epochs = s.save_best_metric, s.skip_epochs
        self.save_interval, self.checksum_enabled = s.save_interval, s.checksum
        self.keep_mode, self.keep_limit = s.keep_mode, s.keep_limit
        self.ckpt_directory, self.metadata = str(s.directory), s.metadata
        self.epoch_max, self.save_weights_only = s.epochs, s.save_weights_only

    # ----------------------------------------------------------------- state
    @property
    def best_metric_last(self) -> float | None:
        """The best metric so far (including a save still in flight)."""
        pending = self._async.pending if self._async is not None else None
        return pending.best_metric_last if pending is not None else self._best.value

    @best_metric_last.setter
    def best_metric_last(self, value: Any) -> None:
        self._best = BestTracker(self._best.sign, _metric(value), self._best.epoch)

    @property
    def epoch_best(self) -> int | None:
        pending = self._async.pending if self._async is not None else None
        return pending.epoch_best if pending is not None else self._best.epoch

    @property
    def epochs(self) -> list[int]:
        """The epochs this engine wrote and still keeps (the keep policy's scope)."""
        return self._saver.run_epochs

    @property
    def epoch_restarted(self) -> int | None:
        return self._saver.resumed_from

    @property
    def time_saving(self) -> float:
        return self._saver.time_saving

    def report_initial(self) -> None:
        """Simply report that we are ready to run."""
        self._report_start()

    def report_final(self) -> None:
        """Report what this run saved, its best, and the time spent saving."""
        self._report_end()

    def _report_start(self) -> None:
        if self._quiet_start:  # a module-level restart(): the callback reports the run
            return
        s = self.settings
        source = getattr(s, "directory_source", None)
        self._log.info(
            f"checkpointing into {relpath(s.directory)}"
            + (f" ({source})" if source else "")
            + f": restart_mode={s.restart_mode} save_best={s.save_best} "
            f"metric={s.save_best_metric!r} ({self.direction.mode}; {self.direction.reason}) "
            f"interval={s.save_interval} skip={s.skip_epochs} keep={s.keep_mode}/"
            f"{s.keep_limit} checksum={s.checksum} backend={self.backend_name}"
        )
        self._log.info(self._preempt.describe())
        if s.save_interval == 0:
            self._log.info("ckpt_save_interval=0: no checkpoint is saved in this run (no "
                           "interval, best or final-epoch checkpoints); restart still reads "
                           "existing ones")

    def _report_end(self) -> None:
        self._log.info(
            f"checkpoints written this run: {len(self.epochs)}"
            f" (epochs {', '.join(map(str, self.epochs)) or 'none'}); best epoch "
            f"{self.epoch_best} {self.save_best_metric}={self.best_metric_last}; "
            f"time saving {self.time_saving:.3f}s"
        )

    # ----------------------------------------------------------------- lock, lifetime
    def _ensure_lock(self) -> None:
        """Hold the writer lock (taken again after close()); prove it before a save."""
        if not self._writer:
            return  # multi-process: rank 0 holds it for all
        if self._lock is None:
            self._lock = acquire_writer_lock(self.layout.root)
            try:
                self.committer.recover()  # a crash's leftovers: we are the only writer
            except BaseException:
                self._lock.release()
                self._lock = None
                raise
        self._lock.check()

    def wait(self) -> None:
        """Wait for a background save to be committed; raise its error if it failed.

        Raises:
            CheckpointWriteError: the background save failed (earlier checkpoints, ``last``
                and the best so far are untouched).
        """
        saver = getattr(self, "_async", None)
        if saver is not None:
            record = saver.wait()
            if record is not None:
                self._adopt(record)

    def close(self) -> None:
        """Wait for a background save, then release the checkpoint directory.

        The directory is taken again by the next save or restart.
        """
        try:
            self.wait()
        finally:
            saver = getattr(self, "_saver", None)
            if saver is not None:
                saver.finish_deletions()  # nothing of ours goes on in the directory
            preempt = getattr(self, "_preempt", None)
            if preempt is not None:
                preempt.stop()
            lock, self._lock = getattr(self, "_lock", None), None
            if lock is not None:
                lock.release()

    def __enter__(self) -> CandleCkpt:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except CkptError as err:  # a background save failed: no caller to raise it to
            shutdown.report(str(err))
        except Exception:  # interpreter shutdown
            pass

    def on_train_end(self, logs: Any = None) -> None:
        """Wait for a background save (raising its error), report, release the lock."""
        try:
            self.wait()
        finally:
            self._report_end()
            self.close()

    # ----------------------------------------------------------------- saving
    def save_check_best(self, epoch: int, direction: str, metric_value: Any) -> bool:
        """Is ``metric_value`` a new best (does not record it)?"""
        return self.save_best and self._best.improved(_metric(metric_value), direction)

    def save_check(self, epoch: int, direction: str, metric_value: Any) -> bool:
        """Should the (1-based) epoch be saved? Records a new best when it is one."""
        record = self._decide(int(epoch), _direction(direction), _metric(metric_value))
        if record is not None:
            self._best = BestTracker(self._best.sign, record.best_metric_last, record.epoch_best)
        return record is not None

    def ckpt_epoch(self, epoch: int, direction: str | None = None,
                   metric_value: Any = None) -> bool:
        """Checkpoint the 0-based ``epoch`` just completed, if the policies say so.

        Procedure: 1. write the state to ckpts/work 2. rename it to ckpts/epochs/NNN
        3. if best, link ckpts/best to it 4. link ckpts/last to it 5. apply the keep
        policy. Returns True when a checkpoint was written (with ``ckpt_async``: started).
        """
        epoch_now = _epoch_arg(epoch) + 1
        sign = self.direction.sign if direction is None else _direction(direction)
        metric = _metric(metric_value)
        if self._preempt.stop_requested:
            self._log.info(f"epoch {epoch_now}: not saved as complete; training was stopped "
                           "mid-epoch (its mid-epoch checkpoint is the one to resume from)")
            return False
        self._ensure_lock()
        self.wait()  # at most one save in flight; capture may reuse the previous buffers
        # The same decision on every rank: rank 0's, on the metric reduced across ranks.
        record = self._coord.decide(lambda m: self._decide(epoch_now, sign, m), metric,
                                    self.settings.distributed_metric)
        if record is None:
            return False
        self._start_save(record)
        return True

    def _start_save(self, record: SaveRecord, durable: bool = False) -> None:
        """Save a record: in the background with ckpt_async, unless ``durable`` is needed."""
        self._preempt.saved()
        if self._async is not None and not durable:
            self._async.submit(record, self._capture(live=False))
        else:
            self._saver.save(record, self._capture(live=True))
            self._adopt(record)

    def _capture(self, live: bool) -> Any:
        """The backend's snapshot; multi-process, a failure travels to the collective save
        (every rank must reach it, or the others would wait there forever)."""
        return self._coord.attempt("capturing its state", lambda: self.backend.capture(live))

    def ckpt_batch(self, epoch: int, batch: int) -> bool:
        """Call after each optimizer step: saves mid-epoch when a stop or a time save is due.

        ``epoch`` and ``batch`` are 0-based, like ``ckpt_epoch``'s: the epoch being trained
        and the batch just done. On a stop signal (``ckpt_signals``) or near the
        wall-clock limit, a mid-epoch checkpoint is committed and True returned: end the
        training loop. ``ckpt_save_interval_seconds`` saves return False (keep going).
        """
        due, interval_due = self._preempt.due(), self._preempt.interval_due()
        if self._preempt.may_fire:
            due, interval_due = self._coord.agree_on_stop(due, interval_due)
        if due is None and not interval_due:
            return False
        if self._preempt.stop_requested:
            return True  # saved already; the loop should have stopped
        epoch_done, batches = _epoch_arg(epoch), _epoch_arg(batch, "batch") + 1
        self._ensure_lock()
        self.wait()
        reason = due.reason if due is not None else (
            f"ckpt_save_interval_seconds={self._preempt.interval:g}")
        record = self._record(epoch_done, None, False, self._best, batch=batches, reason=reason)
        self._start_save(record, durable=due is not None)
        if due is None:
            return False
        self._preempt.stop_requested = True
        self._log.warning(f"{reason}: saved a mid-epoch checkpoint (epoch {epoch_done} + "
                          f"{batches} batches); stopping training")
        if self._writer:  # one requeue per job, not one per rank
            self._preempt.after_stop_save(due)
        return True

    @property
    def stop_requested(self) -> bool:
        """True once a stop-save was committed: the training loop should end."""
        return self._preempt.stop_requested

    def _decide(self, epoch: int, sign: str, metric: float | None) -> SaveRecord | None:
        """The record of a save of ``epoch``, or None when the policies say no."""
        is_best = self.save_best and self._best.improved(metric, sign)
        decision = should_save(epoch, epochs_total=self.epoch_max, skip_epochs=self.skip_epochs,
                               save_interval=self.save_interval, save_best=self.save_best,
                               is_new_best=is_best)
        self._log.debug(f"epoch {epoch}: {'saving' if decision.save else 'not saving'} "
                        f"({decision.reason})")
        if not decision.save:
            return None
        if is_best:
            best = self._best.after(epoch, metric, sign)
        elif epoch == self._best.epoch:
            # Re-doing the best epoch (a run that loops from epoch 0 again) with a metric
            # that is not better: the best checkpoint is replaced, so the best is now
            # the best of what will exist, possibly this one.
            recorded = recorded_metrics(self.layout, self.save_best_metric, self.direction.mode)
            recorded[epoch] = metric
            best = best_among(recorded, sign)
            is_best = self.save_best and best.epoch == epoch
            self._log.info(f"epoch {epoch}: re-done with {self.save_best_metric}={metric}, "
                           f"not better than its earlier {self._best.value}; best is now "
                           + (f"epoch {best.epoch} ({best.value})" if best.epoch is not None
                              else "none (no checkpoint records a finite metric)"))
        else:
            best = self._best
        return self._record(epoch, metric, is_best, best)

    def _record(self, epoch: int, metric: float | None, is_best: bool,
                best: BestTracker, batch: int = 0, reason: str = "") -> SaveRecord:
        return SaveRecord(
            epoch=epoch, metric_value=metric, is_best=is_best, best_metric_last=best.value,
            epoch_best=best.epoch, save_best_metric=self.save_best_metric,
            best_mode=self.direction.mode,
            checksum_algorithm=DEFAULT_ALGORITHM if self.checksum_enabled else None,
            metadata=self.metadata, backend=self.backend_name, time=time.time(),
            time_previous=self._time_last, batch=batch, reason=reason)

    def _adopt(self, record: SaveRecord) -> None:
        """A save was committed: its best is now the best so far."""
        self._best = BestTracker(self._best.sign, record.best_metric_last, record.epoch_best)
        self._time_last = record.time

    # ----------------------------------------------------------------- restart
    def _attach_model(self, model: Any) -> None:
        """Hook: ``restart(model)`` hands the model to the backend here."""

    def _is_model(self, obj: Any) -> bool:
        """Hook: can this backend restore into ``obj``? (The base engine has no model, so
        anything but hyperparameters goes to :meth:`_attach_model`, which ignores it.)"""
        return not _is_params(obj)

    def _has_model(self) -> bool:
        """Hook: has ``set_model`` (or an earlier restart) named what to restore into?"""
        return True

    def _restart_args(self, model: Any, verbose: Any) -> tuple[Any, Any]:
        """``restart``'s arguments, in every shape CANDLE code passes them, as (the model
        to attach or None, verbose).

        ``restart(gParameters, model)`` (the module-level function's order, used on the
        method by candle_lib's Keras example) puts the model where ``verbose`` goes;
        ``restart(gParameters)`` (Uno, after ``set_model``) puts hyperparameters where
        the model goes. The original ignored the argument and loaded into the model given
        to ``set_model``; so does this, saying so in the log.

        Raises:
            CkptParamError: the argument is neither a model nor hyperparameters and no
                model was given to ``set_model``, or two models are given.
        """
        if not _is_flag(verbose):  # restart(gParameters, model)
            if model is not None and not _is_params(model):
                raise CkptParamError(
                    f"restart: verbose is a {_type_name(verbose)} and the first argument a "
                    f"{_type_name(model)}; {_RESTART_SHAPES}")
            model, verbose = verbose, True
        if model is None or self._is_model(model):
            return model, verbose
        what = ("the hyperparameters (gParameters)" if _is_params(model)
                else f"the {_type_name(model)} given")
        if self._has_model():
            log = self._log.debug if _is_params(model) else self._log.warning
            log(f"restart: {what} is not a model; ignored, restoring into the model given "
                "to set_model")
            return None, verbose
        if _is_params(model):
            return None, verbose  # the backend says what to do when it has no model
        raise CkptParamError(
            f"restart: the argument is a {_type_name(model)}, not a model, and set_model "
            f"named none; {_RESTART_SHAPES}")

    def restart(self, model: Any = None, verbose: Any = True) -> dict[str, Any] | None:
        """Restart from ``last`` per ckpt_restart_mode; the info dict, or None.

        Accepted: ``restart()``, ``restart(model)``, ``restart(model, verbose)``,
        ``restart(gParameters, model)`` and ``restart(gParameters)``; the model passed,
        else the one given to ``set_model``, is restored (see :meth:`_restart_args`).

        Raises:
            CkptParamError: no model to restore into, or an argument that is not one.
            CheckpointNotFoundError: mode "required" and no usable checkpoint.
            CheckpointCorruptError: ``last`` escapes the tree or is not a link.
            CheckpointMismatchError: the checkpoint does not fit the model (nothing loaded).
        """
        model, verbose = self._restart_args(model, verbose)
        self.wait()
        if model is not None:
            self._attach_model(model)
        if self.restart_mode == "off":
            self._log.info("ckpt_restart_mode='off': training starts from scratch; "
                           "checkpoints on disk are not read")
            return None
        self._ensure_lock()
        result = self._restorer.restart(self.backend, verbose)
        if result is None:
            return None
        self.restart_info = result.J
        self._saver.resumed_from = result.epoch
        if result.batch:  # a mid-epoch checkpoint is superseded by this run's next one
            self._saver.run_partials.append(CkptKey(result.epoch, result.batch))
        if self.settings.best_metric_last is None:
            self._best = BestTracker(self._best.sign, result.best.value, result.best.epoch)
        return result.J


_RESTART_SHAPES = ("call restart(), restart(model), restart(gParameters, model) or "
                   "restart(gParameters), with the model given here or to set_model(...) "
                   "first")


def _is_params(obj: Any) -> bool:
    """Hyperparameters as CANDLE code passes them: a dict or an argparse.Namespace."""
    return isinstance(obj, (Mapping, argparse.Namespace))


def _is_flag(value: Any) -> bool:
    """Could ``value`` be restart's ``verbose`` (rather than a model passed there)?"""
    return value is None or isinstance(value, (bool, int, float, str)) or (
        getattr(value, "ndim", None) == 0)  # a numpy or torch scalar


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def _make_directory(d: Path, source: str) -> None:
    """Create the checkpoint root, or CkptParamError naming the parameter it came from."""
    key = "output_dir" if source.startswith("output_dir") else "ckpt_directory"
    if d.exists() and not d.is_dir():
        raise CkptParamError(f"parameter {key!r}: value {str(d)!r} is a file; "
                             "give a directory (it is created if missing)")
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CkptParamError(
            f"parameter {key!r}: value {str(d)!r} is not writable "
            f"({str(probe)!r} denies write access); give a writable directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CkptParamError(
            f"parameter {key!r}: value {str(d)!r} cannot be created: {err}") from err


def _direction(direction: Any) -> str:
    if direction not in ("+", "-"):
        raise CkptParamError(f"direction: value {direction!r} is not allowed; accepted: '+', '-'")
    return str(direction)


def _epoch_arg(epoch: Any, name: str = "epoch") -> int:
    """A 0-based epoch (or batch) index argument, as an int, or a clear error."""
    if isinstance(epoch, bool) or not hasattr(epoch, "__index__") and not (
            isinstance(epoch, float) and epoch.is_integer()):
        raise CkptParamError(f"{name}: value {epoch!r} is not accepted; pass a 0-based "
                             f"{name} index (an int >= 0)")
    value = int(epoch)
    if value < 0:
        raise CkptParamError(f"{name}: value {value} is negative; pass a 0-based {name} "
                             "index (an int >= 0)")
    return value
