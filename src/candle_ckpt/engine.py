"""CandleCkpt: the CANDLE checkpoint API, a thin facade over the parts that do the work.

``params`` validates the hyperparameters, ``policy`` decides (save? best? keep?), a
``Saver`` (``AsyncSaver`` with ``ckpt_async``) writes and commits a frozen
``SaveRecord``, a ``Restorer`` finds, validates and loads, and a backend (the protocol
in ``backends/base.py``) captures, writes and loads the framework's state. Every method name
of the spec is here, each delegating; the engine never calls its own overridable spec
methods, so a user subclass overriding one cannot change how saving works.
"""

from __future__ import annotations

from typing import Any

from . import params as _params
from . import shutdown
from .backends.base import Backend, NoBackend, Progress
from .calls import RestartArgs
from .coordination import Coordinator, LocalCoordinator
from .errors import CkptError
from .logs import CkptLog, check_logger, end_report, start_report
from .planner import Planner
from .policy import best_direction
from .preempt import Preemption, PreemptPlan
from .record import SaveRecord
from .restorer import Restorer
from .saver import AsyncSaver, KeepRule, Saver
from .spec import SpecMethods, _metric, read_info_json
from .storage.commit import Committer
from .storage.layout import CkptKey, Layout, recorded_metrics
from .storage.lock import Lease
from .storage.objects import OBJECTS_DIR, ObjectStore

__all__ = ["CandleCkpt", "read_info_json"]


class CandleCkpt(SpecMethods, RestartArgs):
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
        preempt_plan = PreemptPlan.from_settings(self.settings)  # checked before any write
        # Multi-process: only rank 0 (the writer) touches the tree; see coordination.py.
        self._coord: Coordinator = self._new_coordinator()
        self._writer = self._coord.is_writer
        if self._writer:
            _params.make_root(self.settings.directory, self.settings.directory_source)
        self.layout = Layout.ours(self.settings.directory)
        self._log = CkptLog(self.layout.log_file if self._writer else None, logger, verbose,
                            warnings_only=not self._writer)
        self._preempt = Preemption(preempt_plan, self._log)
        for warning in [] if self._quiet_start else _params.unknown_key_warnings(gParameters):
            self._log.warning(warning)
        self.backend: Backend = self._new_backend()
        metric = self.settings.save_best_metric
        self.direction = best_direction(metric, self.settings.save_best_mode)
        self._plan = Planner(
            self.settings, self.direction, self.backend_name,
            lambda: recorded_metrics(self.layout, metric, self.direction.mode),
            lambda level, message: getattr(self._log, level)(message))
        self.committer = Committer(self.layout, self._log.info)
        keep = KeepRule(self.settings.keep_mode, self.settings.keep_limit,
                        self.settings.keep_bytes)
        store = ObjectStore(self.layout.base / OBJECTS_DIR, verify_reused=self.settings.checksum
                            ) if self.settings.dedup else None
        self._saver = Saver(self.layout, self.committer, self.backend, self._log, keep,
                            self._coord, store)
        self._async = AsyncSaver(self._saver, self._log) if self.settings.async_save else None
        self._restorer = Restorer(self.settings.directory, self.settings.restart_mode,
                                  self.settings.checksum, self._log, self._coord)
        self.restart_info: dict[str, Any] | None = None
        self._lease = Lease(self.layout.root, self.committer.recover, self._writer)
        self._lease.ensure()
        try:
            if self.settings.restart_mode != "off" and self.settings.best_metric_last is None:
                peeked = self._coord.broadcast(
                    self._restorer.peek_best() if self._writer else None)
                if peeked is not None:
                    self._plan.take_best(peeked.value, peeked.epoch)
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
        """Simply translate gParameters into settings (validating every one).

        The original's instance fields (``restart_mode``, ``keep_limit`` ...) read them.
        """
        self.gParams = gParams
        self.settings = _params.read_settings(gParams)

    def _report_start(self) -> None:
        if not self._quiet_start:  # a module-level restart(): the callback reports the run
            for line in start_report(self.settings, self.direction, self.backend_name,
                                     self._preempt.describe()):
                self._log.info(line)

    def _report_end(self) -> None:
        self._log.info(end_report(self.epochs, self.epoch_best,
                                  self.settings.save_best_metric, self.best_metric_last,
                                  self.time_saving))

    # ----------------------------------------------------------------- lifetime
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
                self._plan.adopt(record)

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
            lease = getattr(self, "_lease", None)
            if lease is not None:
                lease.release()

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
    def ckpt_epoch(self, epoch: int, direction: str | None = None,
                   metric_value: Any = None) -> bool:
        """Checkpoint the 0-based ``epoch`` just completed, if the policies say so.

        Procedure: 1. write the state to ckpts/work 2. rename it to ckpts/epochs/NNN
        3. if best, link ckpts/best to it 4. link ckpts/last to it 5. apply the keep
        policy. Returns True when a checkpoint was written (with ``ckpt_async``: started).
        """
        epoch_now = _params.epoch_arg(epoch) + 1
        sign = self.direction.sign if direction is None else _params.direction_arg(direction)
        metric = _metric(metric_value)
        if self._preempt.stop_requested:
            self._log.info(f"epoch {epoch_now}: not saved as complete; training was stopped "
                           "mid-epoch (its mid-epoch checkpoint is the one to resume from)")
            return False
        self._lease.ensure()
        self.wait()  # at most one save in flight; capture may reuse the previous buffers
        # The same decision on every rank: rank 0's, on the metric reduced across ranks.
        record = self._coord.decide(lambda m: self._plan.decide(epoch_now, sign, m), metric,
                                    self.settings.distributed_metric)
        if record is None:
            return False
        self._start_save(record, Progress(epoch_now, metric))
        return True

    def _start_save(self, record: SaveRecord, progress: Progress,
                    durable: bool = False) -> None:
        """Save a record: in the background with ckpt_async, unless ``durable`` is needed."""
        self._preempt.saved()
        if self._async is not None and not durable:
            self._async.submit(record, self._capture(False, progress))
        else:
            self._saver.save(record, self._capture(True, progress))
            self._plan.adopt(record)

    def _capture(self, live: bool, progress: Progress) -> Any:
        """The backend's snapshot; multi-process, a failure travels to the collective save
        (every rank must reach it, or the others would wait there forever)."""
        return self._coord.attempt("capturing its state",
                                   lambda: self.backend.capture(live, progress))

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
        epoch_done, batches = _params.epoch_arg(epoch), _params.epoch_arg(batch, "batch") + 1
        self._lease.ensure()
        self.wait()
        reason = due.reason if due is not None else (
            f"ckpt_save_interval_seconds={self._preempt.interval:g}")
        record = self._plan.mid_epoch(epoch_done, batches, reason)
        self._start_save(record, Progress(epoch_done, batch=batches), durable=due is not None)
        if due is None:
            return False
        self._preempt.stopped(due, epoch_done, batches, self._writer)
        return True

    @property
    def stop_requested(self) -> bool:
        """True once a stop-save was committed: the training loop should end."""
        return self._preempt.stop_requested

    # ----------------------------------------------------------------- restart
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
        if self.settings.restart_mode == "off":
            self._log.info("ckpt_restart_mode='off': training starts from scratch; "
                           "checkpoints on disk are not read")
            return None
        self._lease.ensure()
        result = self._restorer.restart(self.backend, verbose)
        if result is None:
            return None
        self.restart_info = result.J
        self._saver.resumed_from = result.epoch
        if result.batch:  # a mid-epoch checkpoint is superseded by this run's next one
            self._saver.run_partials.append(CkptKey(result.epoch, result.batch))
        if self.settings.best_metric_last is None:
            self._plan.take_best(result.best.value, result.best.epoch)
        return result.J
