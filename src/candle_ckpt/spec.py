"""The spec's pass-through methods of ``CandleCkpt``: parameters, logging, legacy I/O hooks.

The original CANDLE engine exposed these as public methods (``param_type_check``,
``write_model``, ``symlink``, ``keep`` ...); users' code calls them, so they stay, each
a line or two over the parts that do the work. The engine itself never calls them:
overriding one in a subclass cannot change how saving or restarting works.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import params as _params
from .backends.base import Backend, Progress
from .logs import CkptLog, relpath
from .params import ParamType
from .planner import Planner
from .record import Written, as_metric, to_info
from .saver import AsyncSaver, Saver
from .storage.commit import Committer
from .storage.integrity import DEFAULT_ALGORITHM, DISABLED, ChecksumTally, checksum_file
from .storage.layout import INFO_FILE, Layout, read_info_file


def _setting(name: str) -> Any:
    """A read-only instance field of the original engine, read from ``settings``."""
    return property(lambda self: getattr(self.settings, name),
                    doc=f"The validated setting ``{name}`` (see ``settings``).")


class SpecMethods:
    """Mixin of :class:`~candle_ckpt.engine.CandleCkpt` (the spec's thin methods and the
    original's instance fields, all read from the one ``settings`` object)."""

    gParams: Any
    settings: _params.CkptSettings
    layout: Layout
    committer: Committer
    backend: Backend
    _log: CkptLog
    _saver: Saver
    _plan: Planner
    _async: AsyncSaver | None

    if TYPE_CHECKING:  # provided by CandleCkpt
        def _report_start(self) -> None: ...

        def _report_end(self) -> None: ...

    # ------------------------------------------------ the original's instance fields
    restart_mode = _setting("restart_mode")
    save_best = _setting("save_best")
    save_best_metric = _setting("save_best_metric")
    skip_epochs = _setting("skip_epochs")
    save_interval = _setting("save_interval")
    checksum_enabled = _setting("checksum")
    keep_mode = _setting("keep_mode")
    keep_limit = _setting("keep_limit")
    metadata = _setting("metadata")
    epoch_max = _setting("epochs")
    save_weights_only = _setting("save_weights_only")

    @property
    def ckpt_directory(self) -> str:
        return str(self.settings.directory)

    @property
    def best_metric_last(self) -> float | None:
        """The best metric so far (including a save still in flight)."""
        pending = self._async.pending if self._async is not None else None
        return pending.best_metric_last if pending is not None else self._plan.best.value

    @best_metric_last.setter
    def best_metric_last(self, value: Any) -> None:
        self._plan.take_best(_metric(value), self._plan.best.epoch)

    @property
    def epoch_best(self) -> int | None:
        pending = self._async.pending if self._async is not None else None
        return pending.epoch_best if pending is not None else self._plan.best.epoch

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

    # ------------------------------------------------ methods
    def save_check_best(self, epoch: int, direction: str, metric_value: Any) -> bool:
        """Is ``metric_value`` a new best (does not record it)?"""
        return self._plan.is_new_best(_metric(metric_value), direction)

    def save_check(self, epoch: int, direction: str, metric_value: Any) -> bool:
        """Should the (1-based) epoch be saved? Records a new best when it is one."""
        sign = _params.direction_arg(direction)
        record = self._plan.decide(int(epoch), sign, _metric(metric_value))
        if record is not None:
            self._plan.adopt(record, committed=False)
        return record is not None



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

    def info(self, message: str) -> None:
        self._log.info(message)

    def debug(self, message: str) -> None:
        self._log.debug(message)

    def warning(self, message: str) -> None:
        self._log.warning(message)

    def relpath(self, p: Any) -> Path:
        """If Path p is relative to CWD, relativize it and return it."""
        return relpath(p)

    def write_model(self, dir_work: Any, epoch: int, snapshot: Any = None,
                    metric_value: float | None = None) -> dict[str, Any]:
        """Do the I/O into ``dir_work``: the backend's files, then ckpt-info.json last."""
        record = self._plan.record(int(epoch), _metric(metric_value), False, self._plan.best)
        if snapshot is None:
            snapshot = self.backend.capture(True, Progress(record.epoch, record.metric_value))
        return self._saver.write_work(Path(dir_work), record, snapshot)

    def write_json(self, jsonfile: Any, epoch: int, model_file: str | None = None,
                   files: dict[str, Any] | None = None,
                   metric_value: float | None = None) -> dict[str, Any]:
        """Write the strict ckpt-info.json of a checkpoint (fsynced)."""
        record = self._plan.record(int(epoch), _metric(metric_value), False, self._plan.best)
        info = to_info(record, Written(model_file or "", {}), files or {})
        self.committer.write_info(Path(jsonfile), info)
        return info

    def checksum(self, dir_work: Any) -> str:
        """Simple checksum dispatch: the model file's checksum, or "__DISABLED__"."""
        if not self.settings.checksum:
            return DISABLED
        info = read_info_file(Path(dir_work) / INFO_FILE)
        return self._checksum_logged(Path(dir_work) / str(info.get("model_file")))

    def checksum_file(self, filename: Any) -> str:
        """Read file, compute checksum, return it as a string."""
        return self._checksum_logged(filename)

    def _checksum_logged(self, filename: Any) -> str:
        """A file's checksum, logged as the original did (``checksummed: ...``)."""
        tally = ChecksumTally()
        value = checksum_file(filename, DEFAULT_ALGORITHM, tally=tally)
        self._log.checksummed(tally.nbytes, tally.seconds)
        return value

    def symlink(self, src: Any, dst: Any) -> None:
        """Like os.symlink, but relative, atomic (os.replace) and logged."""
        epoch = int(Path(src).name)
        self.committer.point(Path(dst).name, epoch)
        self.debug(f"linked {relpath(dst)} -> {self.layout.pointer_text(epoch)}")

    def keep(self, epoch: int, epoch_now: int, kept: int) -> bool:
        """The original linear rule: keep the newest, the best, and up to keep_limit."""
        return (epoch == epoch_now or epoch == self.epoch_best
                or kept < self.settings.keep_limit)

    def clean(self, epoch_now: int) -> tuple[int, int]:
        """Delete this run's old checkpoints per the keep policy; (kept, deleted)."""
        return self._saver.clean(epoch_now, self.epoch_best)

    def delete(self, epoch: int) -> None:
        self._saver.delete(epoch)

    def restart_json(self, directory: Any) -> dict[str, Any]:
        """Read a checkpoint directory's ckpt-info.json."""
        return read_info_json(directory)

    def build_model(self, model_file: Any) -> None:
        """Load the state from a checkpoint's model file (its directory's files)."""
        directory = Path(model_file).parent
        restored = self.backend.load(directory, read_info_json(directory))
        for note in restored.apply():
            self.warning(note)


def read_info_json(directory: Any) -> dict[str, Any]:
    """A checkpoint directory's ckpt-info.json, or CheckpointCorruptError saying why not."""
    from .errors import CheckpointCorruptError

    path = Path(directory) / INFO_FILE
    try:
        return read_info_file(path)
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointCorruptError(f"{path}: cannot be read: {err}") from err


def _metric(value: Any) -> float | None:
    from .errors import CkptParamError

    try:
        return as_metric(value)
    except ValueError:
        raise CkptParamError(
            f"metric_value: value {value!r} is not a number; pass the epoch's metric"
        ) from None
