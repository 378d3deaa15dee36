"""``ckpt.log`` and the console: where every engine message goes.

Each message goes to the directory's ``ckpt.log`` (always, every level) and to the
console logger (filtered by the engine's ``verbose``, as the original's was: info lines
always, debug lines with ``verbose=True``).

Three lines are the original CANDLE's, kept to its exact format because workflow tools
and regression suites grep them (``restarting from epoch:``, ``checksummed:``,
``model wrote:``); :class:`CkptLog` has one method for each. On the console they are
printed bare, as the original printed every line (its stream handler's format was the
message alone): Supervisor's scripts match lines that *start* with ``model wrote:``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import CkptParamError
from .storage.layout import TIME_FORMAT
from .storage.safeio import append_log_line, check_log_file, one_line
from .storage.usage import human_size

_MB = 1024 * 1024  # the original's megabyte
_ORIGINAL = "candle_original"  # set on the records of the original's lines
# The original's format strings, verbatim (candle_lib ckpt_utils.py).
RESTARTING_FROM_EPOCH = "restarting from epoch: %i"
CHECKSUMMED = "checksummed: %0.3f MB in %.3f seconds (%.2f MB/s)."
MODEL_WROTE = "model wrote: %0.3f MB in %0.3f seconds (%0.2f MB/s)."
_setup_guard = threading.Lock()
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
        # One write of one escaped line, O_NOFOLLOW: a planted link is refused, never
        # appended to, and no string from a checkpoint can forge a line.
        try:
            append_log_line(self.path, self.format(record))
        except OSError:
            self.handleError(record)


def file_logger(path: Path) -> logging.Logger:
    """One logger and one handler per ckpt.log, however many engines use it."""
    try:
        key = os.path.realpath(path)
    except OSError:  # e.g. a working directory deeper than PATH_MAX: keep it relative
        key = os.fspath(path)
    with _setup_guard:
        # Keyed by the exact path, not by a logger name derived from it: logging treats
        # "." as a hierarchy separator, and any escaping of it lets two paths collide.
        logger = _file_loggers.get(key)
        if logger is None:
            logger = _file_loggers[key] = logging.Logger("candle_ckpt.file:" + key)
            handler = _AppendHandler(key)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", TIME_FORMAT)
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


class _ConsoleFormatter(logging.Formatter):
    """Our lines as ``ckpt: <message>``; the original's lines bare, as it printed them."""

    def __init__(self) -> None:
        super().__init__("ckpt: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, _ORIGINAL, False):
            return record.getMessage()
        return super().format(record)


def console_logger() -> logging.Logger:
    """The shared "DEFAULT" console logger (stdout, one handler, no propagation).

    Its level is DEBUG: each engine filters by its own ``verbose``, so a quiet engine
    does not silence the others, nor a verbose one make the others verbose.
    """
    logger = logging.getLogger("candle_ckpt")
    with _setup_guard:
        if not logger.handlers:
            handler = _StdoutHandler()
            handler.setFormatter(_ConsoleFormatter())
            logger.addHandler(handler)
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
    return logger


def check_logger(logger: Any) -> None:
    """The engine's ``logger`` argument: "DEFAULT", None or a logging.Logger."""
    if not (logger == "DEFAULT" or logger is None or isinstance(logger, logging.Logger)):
        raise CkptParamError(
            f"logger: value {logger!r} is not accepted; give 'DEFAULT', None or a "
            "logging.Logger"
        )


class CkptLog:
    """One engine's messages: to ckpt.log always, to the console per ``verbose``."""

    def __init__(self, log_file: Path | None, logger: Any, verbose: bool,
                 warnings_only: bool = False) -> None:
        """``warnings_only``: the console (or ``logger``) gets warnings and errors alone,
        as the ranks but 0 of a distributed run do (rank 0 says the rest once).

        Raises: UnsafeFileError (ckpt.log is a link, FIFO, device or directory).
        """
        check_logger(logger)
        # None: no ckpt.log (a distributed run's ranks but 0 never write into the tree).
        if log_file is not None:
            check_log_file(log_file)
        self._file = file_logger(log_file) if log_file is not None else None
        self._console_min = logging.NOTSET  # least severe level shown on the console
        if logger == "DEFAULT":
            self._console: logging.Logger | None = console_logger()
            self._console_min = logging.DEBUG if verbose else logging.INFO
        else:
            self._console = logger
        if warnings_only:
            self._console_min = logging.WARNING

    def say(self, level: int, message: str, original: bool = False) -> None:
        """Log one message; never raises (a failing log must not fail a save).

        ``original``: one of the original's lines (printed bare on the console).
        """
        message = one_line(message)  # a newline in a checkpoint's name forges no line
        extra = {_ORIGINAL: True} if original else None
        try:
            if self._file is not None:
                self._file.log(level, message, extra=extra)
            if self._console is not None and level >= self._console_min:
                self._console.log(level, message, extra=extra)
        except Exception:  # logging's own handleError reports handler failures
            pass

    def info(self, message: str) -> None:
        self.say(logging.INFO, message)

    def debug(self, message: str) -> None:
        self.say(logging.DEBUG, message)

    def warning(self, message: str) -> None:
        self.say(logging.WARNING, message)

    # The original's lines (an interface: their text and level never change).
    def restarting_from_epoch(self, epoch: int) -> None:
        """A restart loaded the checkpoint of ``epoch`` (J["epoch"], the initial_epoch)."""
        self.say(logging.INFO, RESTARTING_FROM_EPOCH % epoch, original=True)

    def checksummed(self, nbytes: int, seconds: float) -> None:
        """Checksums of ``nbytes`` bytes were computed (at save, or verified at restart)."""
        self.say(logging.INFO, checksummed_line(nbytes, seconds), original=True)

    def model_wrote(self, nbytes: int, seconds: float) -> None:
        """A save wrote its files (``nbytes`` in all) and made them durable."""
        self.say(logging.DEBUG, MODEL_WROTE % _rate(nbytes, seconds), original=True)


def checksummed_line(nbytes: int, seconds: float) -> str:
    """The original's line for a checksum of ``nbytes`` bytes computed in ``seconds``."""
    return CHECKSUMMED % _rate(nbytes, seconds)


def _rate(nbytes: int, seconds: float) -> tuple[float, float, float]:
    """MB (of 1024*1024 bytes, as the original), seconds, MB/s.

    The original divided by the duration as measured; a duration below the timer's
    resolution is taken as 1 microsecond, so the rate is a number, never a crash.
    """
    mb = nbytes / _MB
    return mb, seconds, mb / max(seconds, 1e-6)


def relpath(p: Any) -> Path:
    """``p`` relative to the working directory when it is below it, else absolute."""
    p = Path(os.path.abspath(p))  # abspath, not resolve: keep last/best as named
    try:
        return p.relative_to(os.path.abspath(os.getcwd()))
    except (ValueError, OSError):
        return p


def start_report(settings: Any, direction: Any, backend: str, preemption: str) -> list[str]:
    """The lines that open a run in the log: where, how, and what may stop it."""
    s = settings
    source = getattr(s, "directory_source", None)
    lines = [
        f"checkpointing into {relpath(s.directory)}"
        + (f" ({source})" if source else "")
        + f": restart_mode={s.restart_mode} save_best={s.save_best} "
        f"metric={s.save_best_metric!r} ({direction.mode}; {direction.reason}) "
        f"interval={s.save_interval} skip={s.skip_epochs} keep={s.keep_mode}/"
        f"{s.keep_limit} checksum={s.checksum} backend={backend}",
        preemption,
    ]
    if getattr(s, "dedup", False):
        lines.append("ckpt_dedup: tensors/variables of 64 KiB or more are stored once, as "
                     "objects shared by the checkpoints (ckpts/objects/); a save writes "
                     "only those whose content is not there yet")
    keep_bytes = getattr(s, "keep_bytes", None)
    if keep_bytes is not None:
        lines.append(f"ckpt_keep_bytes={human_size(keep_bytes)} ({keep_bytes} bytes): this "
                     "run's oldest checkpoints are deleted until its checkpoints fit (last, "
                     "best and the one resumed from are kept in any case)")
    if s.save_interval == 0:
        lines.append("ckpt_save_interval=0: no checkpoint is saved in this run (no interval, "
                     "best or final-epoch checkpoints); restart still reads existing ones")
    return lines


def end_report(epochs: list[int], epoch_best: int | None, metric: str, best: float | None,
               time_saving: float) -> str:
    """The line that closes a run: what it saved, its best, the time spent saving."""
    return (f"checkpoints written this run: {len(epochs)}"
            f" (epochs {', '.join(map(str, epochs)) or 'none'}); best epoch "
            f"{epoch_best} {metric}={best}; time saving {time_saving:.3f}s")
