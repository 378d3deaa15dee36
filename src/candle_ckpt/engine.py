"""CandleCkpt: the framework-agnostic checkpoint engine.

It glues the validated parameters, the pure policies, the layout and the commit
protocol. Backends subclass it and implement three hooks:

- ``capture_state()`` (training thread): copy what must be saved into host memory;
  ``live_state()`` may skip the copy for synchronous saves (training waits for them);
- ``write_state(snapshot, sink)``: write that snapshot's files through a FileSink and
  return the name of the main model file;
- ``load_state(directory, info)``: restore from a validated checkpoint directory.

Keeping capture separate from writing is what lets a save run in the background.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from . import params as _params
from .commit import Committer, FileSink, acquire_lock, release_lock
from .errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CkptError,
    CkptParamError,
)
from .integrity import (
    DEFAULT_ALGORITHM,
    DISABLED,
    check_checkpoint,
    checksum_file,
    has_checksums,
)
from .layout import INFO_FILE, Layout, read_info_file
from .params import ParamType
from .policy import best_direction, epochs_to_delete, is_improvement, should_save

FORMAT_VERSION = 1
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_log_setup_guard = threading.Lock()
_file_loggers: dict[str, logging.Logger] = {}


class _AppendHandler(logging.Handler):
    """Appends each record to ckpt.log and closes it again.

    Records are few (a handful per checkpoint), and holding no descriptor means a run
    directory can be unmounted, moved or deleted while the process lives on.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(self.format(record) + "\n")
        except OSError:
            self.handleError(record)


def _file_logger(path: Path) -> logging.Logger:
    """One logger and one handler per ckpt.log, however many engines use it."""
    key = os.path.realpath(path)
    with _log_setup_guard:
        # Keyed by the exact path, not by a logger name derived from it: logging treats
        # "." as a hierarchy separator, and any escaping of it lets two paths collide.
        logger = _file_loggers.get(key)
        if logger is None:
            logger = _file_loggers[key] = logging.Logger("candle_ckpt.file:" + key)
            handler = _AppendHandler(key)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", _TIME_FORMAT)
            )
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
    return logger


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (it may be redirected later)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _console_logger() -> logging.Logger:
    """The shared "DEFAULT" console logger (stdout, one handler, no propagation).

    Its level stays INFO: each engine filters by its own ``verbose`` (see ``_say``), so a
    quiet engine does not silence the others.
    """
    logger = logging.getLogger("candle_ckpt")
    with _log_setup_guard:
        if not logger.handlers:
            handler = _StdoutHandler()
            handler.setFormatter(logging.Formatter("ckpt: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
            logger.setLevel(logging.INFO)
    return logger


class CandleCkpt:
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

    def __init__(self, gParameters: Any = None, logger: Any = "DEFAULT", verbose: bool = True):
        self.verbose = verbose
        self.scan_params(gParameters)
        if not (logger == "DEFAULT" or logger is None or isinstance(logger, logging.Logger)):
            # Checked before the directory is created: a bad argument writes nothing.
            raise CkptParamError(
                f"logger: value {logger!r} is not accepted; give 'DEFAULT', None or a "
                "logging.Logger"
            )
        self._check_directory()
        self.layout = Layout.ours(self.settings.directory)
        self._ckpt_log = _file_logger(self.layout.log_file)
        # The least severe level shown on the console (the default logger obeys verbose).
        self._console_min = logging.NOTSET
        if logger == "DEFAULT":
            self._console: logging.Logger | None = _console_logger()
            self._console_min = logging.INFO if verbose else logging.WARNING
        elif logger is None:
            self._console = None
        else:
            self._console = logger
        self.committer = Committer(self.layout, self.info)
        self.direction = best_direction(self.save_best_metric, self.settings.save_best_mode)
        self.epoch_best: int | None = None
        self.epochs: list[int] = []  # written by this engine: the keep policy's scope
        self.epoch_restarted: int | None = None
        self.timestamp_last: float | None = None
        self.restart_info: dict[str, Any] | None = None
        self.cksum_model = DISABLED
        self.time_saving = 0.0
        self._lock_key: str | None = None
        self._pending: _Pending | None = None
        self._ensure_lock()
        if self.restart_mode != "off" and self.settings.best_metric_last is None:
            self._peek_best()
        self.report_initial()

    # ----------------------------------------------------------------- parameters
    def scan_params(self, gParams: Any) -> None:
        """Simply translate gParameters into instance fields (validating every one)."""
        self.gParams = gParams
        s = _params.read_settings(gParams)
        self.settings = s
        self.restart_mode = s.restart_mode
        self.save_best = s.save_best
        self.save_best_metric = s.save_best_metric
        self.skip_epochs = s.skip_epochs
        self.save_interval = s.save_interval
        self.checksum_enabled = s.checksum
        self.keep_mode = s.keep_mode
        self.keep_limit = s.keep_limit
        self.ckpt_directory = str(s.directory)
        self.metadata = s.metadata
        self.epoch_max = s.epochs
        self.save_weights_only = s.save_weights_only
        self.best_metric_last: float | None = s.best_metric_last

    def _check_directory(self) -> None:
        d = self.settings.directory
        if d.exists() and not d.is_dir():
            raise CkptParamError(
                f"parameter 'ckpt_directory': value {str(d)!r} is a file; "
                "give a directory (it is created if missing)"
            )
        probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("."))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise CkptParamError(
                f"parameter 'ckpt_directory': value {str(d)!r} is not writable "
                f"({str(probe)!r} denies write access); give a writable directory"
            )
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CkptParamError(
                f"parameter 'ckpt_directory': value {str(d)!r} cannot be created: {err}"
            ) from err

    def param(self, key: str, dflt: Any, type_: ParamType = ParamType.STRING,
              allowed: Any = None) -> Any:
        """Pull key from parameters with type checks and conversions."""
        return _params.param(self.gParams, key, dflt, type_, allowed)

    def param_allowed(self, key: str, value: Any, allowed: Any) -> None:
        _params.param_allowed(key, value, allowed)

    def param_type_check(self, key: str, value: Any, type_: ParamType) -> Any:
        return _params.param_type_check(key, value, type_)

    def param_type_check_bool(self, key: str, value: Any) -> bool:
        return _params.param_type_check_bool(key, value)

    def param_type_check_int(self, key: str, value: Any, type_: ParamType) -> int:
        return _params.param_type_check_int(key, value, type_)

    def param_type_check_float(self, key: str, value: Any, type_: ParamType) -> float:
        return _params.param_type_check_float(key, value, type_)

    def enabled(self, key: str) -> bool:
        return _params.enabled(self.gParams, key)

    def disabled(self, key: str) -> bool:
        return _params.disabled(self.gParams, key)

    # ----------------------------------------------------------------- logging
    def _say(self, level: int, message: str) -> None:
        self._ckpt_log.log(level, message)
        if self._console is not None and level >= self._console_min:
            self._console.log(level, message)

    def info(self, message: str) -> None:
        self._say(logging.INFO, message)

    def debug(self, message: str) -> None:
        self._say(logging.DEBUG, message)

    def warning(self, message: str) -> None:
        self._say(logging.WARNING, message)

    def relpath(self, p: Any) -> Path:
        """If Path p is relative to CWD, relativize it and return it."""
        p = Path(os.path.abspath(p))  # abspath, not resolve: keep last/best as named
        try:
            return p.relative_to(os.path.abspath(os.getcwd()))
        except ValueError:
            return p

    def report_initial(self) -> None:
        """Simply report that we are ready to run."""
        s = self.settings
        self.info(
            f"checkpointing into {self.relpath(s.directory)}: restart_mode={s.restart_mode} "
            f"save_best={s.save_best} metric={s.save_best_metric!r} "
            f"({self.direction.mode}; {self.direction.reason}) interval={s.save_interval} "
            f"skip={s.skip_epochs} keep={s.keep_mode}/{s.keep_limit} checksum={s.checksum} "
            f"backend={self.backend_name}"
        )

    def report_final(self) -> None:
        self.info(
            f"checkpoints written this run: {len(self.epochs)}"
            f" (epochs {', '.join(map(str, self.epochs)) or 'none'}); best epoch "
            f"{self.epoch_best} {self.save_best_metric}={self.best_metric_last}; "
            f"time saving {self.time_saving:.3f}s"
        )

    # ----------------------------------------------------------------- lock
    def _ensure_lock(self) -> None:
        if self._lock_key is None:
            self._lock_key, first_holder = acquire_lock(self.layout)
            # Clean a crash's leftovers only when no engine of this process holds the
            # directory: another one may have a save in flight in work/.
            if first_holder:
                self.committer.recover()

    def close(self) -> None:
        """Wait for a background save, then release the checkpoint directory.

        The directory is taken again by the next save or restart.
        """
        try:
            self.wait()
        finally:
            key, self._lock_key = getattr(self, "_lock_key", None), None
            if key is not None:
                release_lock(key)

    def __enter__(self) -> CandleCkpt:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def on_train_end(self, logs: Any = None) -> None:
        """Wait for a background save (raising its error), report, release the lock."""
        try:
            self.wait()
        finally:
            self.report_final()
            self.close()

    # ----------------------------------------------------------------- backend hooks
    def capture_state(self) -> Any:
        """Copy the state to save into host memory (training thread).

        Called only when no save is in flight, so a backend may reuse the buffers of
        its previous snapshot (memory stays bounded at one extra copy).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement capture_state")

    def live_state(self) -> Any:
        """The state for a synchronous save, which is written before training resumes.

        So it need not be a copy: a backend may return references to the live state and
        save the time and memory of ``capture_state``'s copy. By default, that copy.
        """
        return self.capture_state()

    def write_state(self, snapshot: Any, sink: FileSink) -> str:
        """Write a captured state's files; return the main model file's name."""
        raise NotImplementedError(f"{type(self).__name__} does not implement write_state")

    def load_state(self, directory: Path, info: dict[str, Any]) -> None:
        """Restore the state from a validated checkpoint directory."""
        raise NotImplementedError(f"{type(self).__name__} does not implement load_state")

    def state_metadata(self) -> dict[str, Any]:
        """Extra fields for ckpt-info.json (e.g. what the checkpoint holds)."""
        return {}

    def attach_model(self, model: Any) -> None:
        """Hook: restart(model) hands the model here."""

    # ----------------------------------------------------------------- saving
    def save_check_best(self, epoch: int, direction: str, metric_value: Any) -> bool:
        """Is ``metric_value`` a new best (does not record it)?"""
        if not self.save_best:
            return False
        return is_improvement(_as_float(metric_value), self.best_metric_last, direction)

    def save_check(self, epoch: int, direction: str, metric_value: Any) -> bool:
        """Should the (1-based) epoch be saved? Records a new best when it is one."""
        is_best = self.save_check_best(epoch, direction, metric_value)
        decision = should_save(
            epoch,
            epochs_total=self.epoch_max,
            skip_epochs=self.skip_epochs,
            save_interval=self.save_interval,
            save_best=self.save_best,
            is_new_best=is_best,
        )
        if not decision.save:
            self.debug(f"epoch {epoch}: not saving ({decision.reason})")
            return False
        if is_best:
            self.best_metric_last = _as_float(metric_value)
            self.epoch_best = epoch
        self.debug(f"epoch {epoch}: saving ({decision.reason})")
        return True

    def ckpt_epoch(self, epoch: int, direction: str | None = None,
                   metric_value: Any = None) -> bool:
        """Checkpoint the 0-based ``epoch`` just completed, if the policies say so.

        Procedure: 1. write the state to ckpts/work 2. rename it to ckpts/epochs/NNN
        3. if best, link ckpts/best to it 4. link ckpts/last to it 5. apply the keep
        policy. Returns True when a checkpoint was written.
        """
        epoch_now = int(epoch) + 1
        if direction is None:
            direction = self.direction.sign
        if direction not in ("+", "-"):
            raise CkptParamError(
                f"direction: value {direction!r} is not allowed; accepted: '+', '-'"
            )
        metric = _as_float(metric_value)
        self._ensure_lock()
        self.wait()  # at most one save in flight; capture may reuse the previous buffers
        best_before = (self.best_metric_last, self.epoch_best)
        if not self.save_check(epoch_now, direction, metric):
            return False
        # save_check changed the best only for a new best (also when this epoch is re-done
        # with a better metric: its old best link is removed while it is moved aside).
        is_best = (self.best_metric_last, self.epoch_best) != best_before
        try:
            if self.settings.async_save:
                self._start_background(epoch_now, self.capture_state(), metric, is_best,
                                       best_before)
            else:
                self._commit(epoch_now, self.live_state(), metric, is_best)
        except BaseException:
            self.best_metric_last, self.epoch_best = best_before
            raise
        return True

    def _start_background(self, epoch: int, snapshot: Any, metric_value: float | None,
                          is_best: bool, best_before: tuple[float | None, int | None]) -> None:
        """Run the whole commit protocol on one writer thread (``ckpt_async``)."""
        pending = _Pending(epoch, best_before)

        def write() -> None:
            try:
                self._commit(epoch, snapshot, metric_value, is_best)
            except BaseException as err:  # reported by the next call into the engine
                pending.error = err
                self.warning(f"epoch {epoch}: background save failed: {err}")

        # Not a daemon: interpreter exit waits for the checkpoint to become durable.
        pending.thread = threading.Thread(target=write, name=f"candle-ckpt-save-{epoch}")
        self._pending = pending
        pending.thread.start()

    def wait(self) -> None:
        """Wait for a background save to be committed; raise its error if it failed.

        Raises:
            CheckpointWriteError: the background save failed (earlier checkpoints and
                ``last`` are untouched).
        """
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None or pending.thread is None:
            return
        pending.thread.join()
        err = pending.error
        if err is None:
            return
        self.best_metric_last, self.epoch_best = pending.best_before
        if isinstance(err, CkptError):
            raise err
        raise CheckpointWriteError(
            getattr(err, "errno", None) or 0,
            f"background save of epoch {pending.epoch} failed: {type(err).__name__}: {err}; "
            "earlier checkpoints and 'last' are untouched",
        ) from err

    def _commit(self, epoch: int, snapshot: Any, metric_value: float | None,
                is_best: bool) -> None:
        start = time.perf_counter()
        work = self.layout.work
        try:
            self.committer.new_work()
            self.write_model(work, epoch, snapshot=snapshot, metric_value=metric_value)
            dir_this = self.committer.publish(epoch, work)
        except OSError as err:
            shutil.rmtree(work, ignore_errors=True)
            raise CheckpointWriteError(
                err.errno,
                f"saving epoch {epoch} into {work} failed: {err.strerror or err}; "
                "earlier checkpoints and 'last' are untouched",
                err.filename,
            ) from err
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if is_best:
            self.symlink(dir_this, self.layout.best)
        elif self.epoch_best is not None and not self.layout.read_pointer("best").ok \
                and self.layout.is_complete(self.epoch_best):
            # best was removed (its epoch re-done) or is missing: point it back at ours.
            self.committer.point("best", self.epoch_best)
        self.symlink(dir_this, self.layout.last)
        if epoch in self.epochs:
            self.epochs.remove(epoch)
        self.epochs.append(epoch)
        elapsed = time.perf_counter() - start
        self.time_saving += elapsed
        self.info(f"epoch {epoch}: saved {self.relpath(dir_this)} in {elapsed:.3f}s"
                  + (" (best)" if is_best else ""))
        self.clean(epoch)

    def write_model(self, dir_work: Any, epoch: int, snapshot: Any = None,
                    metric_value: float | None = None) -> dict[str, Any]:
        """Do the I/O into ``dir_work``: the backend's files, then ckpt-info.json last."""
        dir_work = Path(dir_work)
        if snapshot is None:
            snapshot = self.capture_state()
        algorithm = DEFAULT_ALGORITHM if self.checksum_enabled else None
        sink = FileSink(dir_work, algorithm)
        start = time.perf_counter()
        model_file = self.write_state(snapshot, sink)
        files = sink.finish()
        if model_file not in files:
            raise CheckpointWriteError(
                0, f"backend reported model file {model_file!r} that it did not write"
            )
        nbytes = sum(f["size"] for f in files.values())
        self.debug(f"epoch {epoch}: wrote {len(files)} file(s), {nbytes} bytes in "
                   f"{time.perf_counter() - start:.3f}s")
        self.cksum_model = files[model_file].get("checksum", DISABLED)
        return self.write_json(dir_work / INFO_FILE, epoch, model_file=model_file,
                               files=files, metric_value=metric_value)

    def write_json(self, jsonfile: Any, epoch: int, model_file: str | None = None,
                   files: dict[str, Any] | None = None,
                   metric_value: float | None = None) -> dict[str, Any]:
        """Write the strict ckpt-info.json of a checkpoint (fsynced)."""
        now = time.time()
        elapsed: Any = "__FIRST__" if self.timestamp_last is None else round(
            now - self.timestamp_last, 6)
        self.timestamp_last = now
        info: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "epoch": epoch,
            "save_best_metric": self.save_best_metric,
            "best_metric_last": self.best_metric_last,
            "epoch_best": self.epoch_best,
            "best_mode": self.direction.mode,
            "metric_value": metric_value,
            "model_file": model_file,
            "checksum": self.cksum_model,
            "checksum_algorithm": DEFAULT_ALGORITHM if self.checksum_enabled else None,
            "files": files or {},
            "timestamp": datetime.fromtimestamp(now).strftime(_TIME_FORMAT),
            "time_elapsed": elapsed,
            "metadata": self.metadata,
            "backend": self.backend_name,
        }
        info.update(self.state_metadata())
        self.committer.write_info(Path(jsonfile), info)
        return info

    def checksum(self, dir_work: Any) -> str:
        """Simple checksum dispatch: the model file's checksum, or "__DISABLED__"."""
        if not self.checksum_enabled:
            self.cksum_model = DISABLED
            return DISABLED
        info = read_info_file(Path(dir_work) / INFO_FILE)
        self.cksum_model = self.checksum_file(Path(dir_work) / str(info.get("model_file")))
        return self.cksum_model

    def checksum_file(self, filename: Any) -> str:
        """Read file, compute checksum, return it as a string."""
        return checksum_file(filename, DEFAULT_ALGORITHM)

    def symlink(self, src: Any, dst: Any) -> None:
        """Like os.symlink, but relative, atomic (os.replace) and logged."""
        src, dst = Path(src), Path(dst)
        epoch = int(src.name)
        self.committer.point(dst.name, epoch)
        self.debug(f"linked {self.relpath(dst)} -> {self.layout.pointer_text(epoch)}")

    # ----------------------------------------------------------------- keep policy
    def _protected(self) -> set[int]:
        protected = set()
        for name in ("last", "best"):
            p = self.layout.read_pointer(name)
            if p.epoch is not None:
                protected.add(p.epoch)
        if self.epoch_restarted is not None:
            protected.add(self.epoch_restarted)
        return protected

    def keep(self, epoch: int, epoch_now: int, kept: int) -> bool:
        """The original linear rule: keep the newest, the best, and up to keep_limit."""
        return epoch == epoch_now or epoch == self.epoch_best or kept < self.keep_limit

    def clean(self, epoch_now: int) -> tuple[int, int]:
        """Delete this run's old checkpoints per the keep policy; (kept, deleted)."""
        doomed = epochs_to_delete(self.keep_mode, self.keep_limit, self.epochs, epoch_now,
                                  self.epoch_best, self._protected())
        for epoch in doomed:
            self.delete(epoch)
        return len(self.epochs), len(doomed)

    def delete(self, epoch: int) -> None:
        self.debug(f"deleting epoch {epoch} (keep policy {self.keep_mode}/{self.keep_limit})")
        self.committer.delete_epoch(epoch)
        if epoch in self.epochs:
            self.epochs.remove(epoch)

    # ----------------------------------------------------------------- restart
    def restart_json(self, directory: Any) -> dict[str, Any]:
        """Read a checkpoint directory's ckpt-info.json."""
        path = Path(directory) / INFO_FILE
        try:
            return read_info_file(path)
        except (OSError, ValueError) as err:
            raise CheckpointCorruptError(f"{path}: cannot be read: {err}") from err

    def _restart_layout(self, announce: bool = True) -> tuple[Layout | None, int | None, str]:
        """Where restart would start: (layout, epoch last points to, diagnosis).

        ``announce``: log a re-anchored link (restart does; the peek at construction does
        not, so the log says it once).
        """
        root = self.settings.directory
        layout = Layout.for_restart(root)
        if layout is None:
            return None, None, f"no 'last' in {root}/ckpts or {root}"
        p = layout.read_pointer("last")
        if p.kind in ("directory", "other", "file") and p.epoch is None and not (
            p.problem or "").startswith("dangling"):
            raise CheckpointCorruptError(
                f"{p.path}: {p.problem}; refusing to guess. Point it at a checkpoint with "
                f"'candle-ckpt rollback {root} EPOCH'"
            )
        if p.problem and p.problem.startswith("escapes"):
            raise CheckpointCorruptError(
                f"{p.path}: {p.problem}; refusing to load it. Point it at a checkpoint with "
                f"'candle-ckpt rollback {root} EPOCH'"
            )
        if p.epoch is None:
            return layout, None, f"{p.path}: {p.problem}"
        if p.reanchored and announce:
            self.info(f"{p.path} -> {p.raw} dangles (the tree was moved); re-anchored to "
                      f"{layout.epoch_dir(p.epoch)}")
        return layout, p.epoch, "ok"

    def _no_checkpoint(self, why: str, skipped: list[dict[str, Any]]) -> None:
        root = self.settings.directory
        complete = sorted(set(Layout.ours(root).complete_epochs())
                          | set(Layout.flat(root).complete_epochs()))
        listing = ", ".join(map(str, complete)) if complete else "none"
        message = (f"no checkpoint to restart from ({why}); complete checkpoints on disk: "
                   f"{listing}")
        if complete:
            message += (f". To resume from one, run 'candle-ckpt rollback {root} EPOCH' "
                        "(or re-link ckpts/last to epochs/NNN) and restart")
        if self.restart_mode == "required":
            self.warning(message)
            raise CheckpointNotFoundError(
                f"ckpt_restart_mode='required' but {message}"
                + ("; skipped: " + "; ".join(f"epoch {s['epoch']}: {s['reason']}"
                                             for s in skipped) if skipped else "")
            )
        self.info(message + "; starting from scratch")

    def _peek_best(self) -> None:
        """Read best_metric_last/epoch_best from the checkpoint restart would use."""
        try:
            layout, epoch, _ = self._restart_layout(announce=False)
        except CkptError:
            return
        if layout is None or epoch is None:
            return
        try:
            info = layout.read_info(epoch)
            self._adopt_best(layout, info)  # a non-numeric best: restart will skip it
        except (OSError, ValueError):
            return

    def _adopt_best(self, layout: Layout, info: dict[str, Any]) -> None:
        if self.settings.best_metric_last is not None:
            return
        self.best_metric_last = _as_float(info.get("best_metric_last"))
        epoch_best = info.get("epoch_best")
        if epoch_best is None and "format_version" not in info:
            epoch_best = layout.read_pointer("best").epoch  # original CANDLE: from the link
        self.epoch_best = epoch_best if isinstance(epoch_best, int) else None

    def restart(self, model: Any = None, verbose: bool = True) -> dict[str, Any] | None:
        """Restart from ``last`` per ckpt_restart_mode; the info dict, or None.

        Raises:
            CheckpointNotFoundError: mode "required" and no usable checkpoint.
            CheckpointCorruptError: ``last`` escapes the tree or is not a link.
        """
        self.wait()
        if model is not None:
            self.attach_model(model)
        if self.restart_mode == "off":
            self.info("ckpt_restart_mode='off': not restarting")
            return None
        self._ensure_lock()
        layout, epoch, why = self._restart_layout()
        skipped: list[dict[str, Any]] = []
        if layout is None or epoch is None:
            self._no_checkpoint(why, skipped)
            return None
        candidates = [epoch] + [e for e in reversed(layout.complete_epochs()) if e < epoch]
        for candidate in candidates:
            directory = layout.epoch_dir(candidate)
            reason = self._try_load(layout, candidate, verbose)
            if reason is None:
                assert self.restart_info is not None
                J = dict(self.restart_info)
                J["restarted_from"] = str(directory)
                J["skipped"] = skipped
                return J
            skipped.append({"epoch": candidate, "path": str(directory), "reason": reason})
            self.warning(f"not restarting from {directory}: {reason}")
        self._no_checkpoint("every checkpoint failed validation", skipped)
        return None

    def _try_load(self, layout: Layout, epoch: int, verbose: bool) -> str | None:
        """Validate and load one checkpoint; None on success, else why it was skipped."""
        directory = layout.epoch_dir(epoch)
        info, problems = check_checkpoint(directory, epoch, self.checksum_enabled)
        if info is None or problems:
            return "; ".join(problems)
        try:
            _as_float(info.get("best_metric_last"))
        except CkptParamError:
            return f"{INFO_FILE}: best_metric_last {info.get('best_metric_last')!r} is not a number"
        if self.checksum_enabled and not has_checksums(info):
            self.warning(f"{directory} was written without checksums; verified sizes only")
        try:
            self.load_state(directory, info)
        except Exception as err:  # a framework refusing the file is corruption to us
            return f"loading failed: {type(err).__name__}: {err}"
        self.restart_info = info
        self.epoch_restarted = epoch
        self._adopt_best(layout, info)
        if verbose:
            self.info(f"restarted from {self.relpath(directory)} (epoch {epoch}; "
                      f"{self.save_best_metric} best={self.best_metric_last} "
                      f"at epoch {self.epoch_best})")
        return None

    def build_model(self, model_file: Any) -> None:
        """Load the state from a checkpoint's model file (its directory's files)."""
        directory = Path(model_file).parent
        self.load_state(directory, self.restart_json(directory))


class _Pending:
    """A background save in flight."""

    def __init__(self, epoch: int, best_before: tuple[float | None, int | None]) -> None:
        self.epoch = epoch
        self.best_before = best_before
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise CkptParamError(
            f"metric_value: value {value!r} is not a number; pass the epoch's metric"
        ) from None
    return result
