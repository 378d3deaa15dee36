"""Pre-emption: signals that mean "save now and stop", wall-clock limits, requeueing.

Schedulers warn before they kill: SLURM sends SIGTERM (then SIGKILL after ``KillWait``)
or a chosen signal ahead of time (``--signal=USR1@120``). The handler installed here
only sets a flag (no I/O in a signal handler); the engine looks at it at the next batch
boundary, commits a mid-epoch checkpoint by the usual protocol and asks training to stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

from .errors import CkptParamError
from .storage.layout import TIME_FORMAT

# The clocks the engine reads; tests replace them.
wall_clock: Callable[[], float] = time.time
monotonic: Callable[[], float] = time.monotonic


def under_slurm() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def parse_signals(value: Any) -> tuple[signal.Signals, ...]:
    """``ckpt_signals``: "auto", "none", "SIGUSR1,SIGTERM" (or "USR1 TERM"), or a list.

    Raises:
        CkptParamError: naming the value and the accepted signal names.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return (signal.SIGUSR1, signal.SIGTERM) if under_slurm() else ()
    if isinstance(value, str):
        if value.strip().lower() in ("none", "off", ""):
            return ()
        names: list[Any] = [n for n in value.replace(",", " ").split() if n]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise CkptParamError(f"parameter 'ckpt_signals': value {value!r} is not accepted; "
                             "give 'auto', 'none', or signal names like 'SIGUSR1,SIGTERM'")
    found: list[signal.Signals] = []
    for name in names:
        sig = _signal(name)
        if sig not in found:
            found.append(sig)
    return tuple(found)


_REFUSED = {"SIGKILL", "SIGSTOP"}


def _signal(name: Any) -> signal.Signals:
    if isinstance(name, signal.Signals):
        return name
    text = str(name).strip().upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    accepted = "e.g. SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP (SIGKILL cannot be caught)"
    if text in _REFUSED or not hasattr(signal.Signals, text):
        raise CkptParamError(f"parameter 'ckpt_signals': {name!r} is not a signal that can be "
                             f"caught; accepted: {accepted}")
    return signal.Signals[text]


def parse_walltime_end(value: Any) -> tuple[float | None, str]:
    """``ckpt_walltime_end``: (unix time or None, where it came from)."""
    text = "auto" if value is None else str(value).strip()
    if text.lower() in ("none", "off", ""):
        return None, "none"
    if text.lower() == "auto":
        env = os.environ.get("SLURM_JOB_END_TIME")
        if env and env.strip().isdigit():
            return float(env), "SLURM_JOB_END_TIME"
        return None, "none (no SLURM_JOB_END_TIME)"
    try:
        return float(text), "ckpt_walltime_end"
    except ValueError:
        pass
    try:
        return datetime.strptime(text, TIME_FORMAT).timestamp(), "ckpt_walltime_end"
    except ValueError:
        raise CkptParamError(
            f"parameter 'ckpt_walltime_end': value {value!r} is not accepted; give 'auto', "
            "'none', a unix time or 'YYYY-MM-DD HH:MM:SS' (local time)") from None


class SignalWatch:
    """Handlers that only set a flag; installed in the main thread while training runs.

    Installing chains to a previous Python handler (it is called after the flag is set);
    uninstalling restores the previous handlers exactly.
    """

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self.count = 0
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> list[str]:
        """Install the handlers (main thread only); the names installed."""
        if self.installed or not self.signals:
            return []
        if threading.current_thread() is not threading.main_thread():
            return []
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return [s.name for s in self.signals]

    def uninstall(self) -> None:
        previous, self._previous = self._previous, {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (TypeError, ValueError, OSError):
                pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Nothing but flags here: the save happens at the next batch boundary.
        if self.received is None:
            self.received = signal.Signals(signum)
        self.count += 1
        previous = self._previous.get(signal.Signals(signum))
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(signum, frame)


@dataclass(frozen=True)
class StopDue:
    """Why training should save and stop now (a signal, or the wall-clock limit)."""

    reason: str
    signal: signal.Signals | None = None


def requeue(log: Callable[[str], None]) -> bool:
    """``scontrol requeue $SLURM_JOB_ID``; logs the outcome, True on success."""
    job = os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if not job or scontrol is None:
        log(f"not requeued: {'no SLURM_JOB_ID' if not job else 'scontrol not found on PATH'}")
        return False
    try:
        proc = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log(f"scontrol requeue {job} failed: {err}")
        return False
    if proc.returncode != 0:
        log(f"scontrol requeue {job} failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[:300]}")
        return False
    log(f"requeued SLURM job {job} (scontrol requeue)")
    return True


@dataclass(frozen=True)
class PreemptPlan:
    """The pre-emption hyperparameters, parsed and checked (before anything is written)."""

    signals: tuple[signal.Signals, ...]
    end: float | None
    end_source: str
    margin: float
    interval: float
    requeue: str

    @classmethod
    def from_settings(cls, settings: Any) -> PreemptPlan:
        """Raises: CkptParamError naming ckpt_signals or ckpt_walltime_end."""
        end, end_source = parse_walltime_end(settings.walltime_end)
        return cls(parse_signals(settings.signals), end, end_source,
                   float(settings.walltime_margin), float(settings.save_interval_seconds),
                   settings.requeue)


class Preemption:
    """When to save mid-epoch: a stop signal, the wall-clock limit, or a time interval."""

    def __init__(self, plan: PreemptPlan, log: Any) -> None:
        self.log = log
        self.watch = SignalWatch(plan.signals)
        self.end, self.end_source = plan.end, plan.end_source
        self.margin = plan.margin
        self.interval = plan.interval
        self.requeue_mode = plan.requeue
        self.last_save = monotonic()
        self.stop_requested = False

    def describe(self) -> str:
        signals = ",".join(s.name for s in self.watch.signals) or "none"
        end = "none" if self.end is None else (
            f"{datetime.fromtimestamp(self.end).strftime(TIME_FORMAT)} ({self.end_source}), "
            f"stop {self.margin:g}s before")
        every = f"{self.interval:g}s" if self.interval else "off"
        return f"stop signals={signals}; wall-clock end={end}; time-based saves={every}"

    def start(self) -> None:
        """Training begins: install the signal handlers (main thread only)."""
        installed = self.watch.install()
        if installed:
            self.log.info(f"installed handlers for {', '.join(installed)}: save a mid-epoch "
                          "checkpoint at the next batch and stop")

    def stop(self) -> None:
        """Training ended: restore the previous handlers."""
        if self.watch.installed:
            self.watch.uninstall()
            self.log.debug("restored the previous signal handlers")

    def due(self) -> StopDue | None:
        """Save and stop now? (a signal arrived, or the wall-clock limit is near)."""
        if self.watch.received is not None:
            return StopDue(f"received {self.watch.received.name}", self.watch.received)
        if self.end is not None and wall_clock() >= self.end - self.margin:
            return StopDue(f"wall-clock limit: the job ends at "
                           f"{datetime.fromtimestamp(self.end).strftime(TIME_FORMAT)} "
                           f"({self.end_source}), margin {self.margin:g}s")
        return None

    @property
    def may_fire(self) -> bool:
        """Can a mid-epoch save become due at all (the same on every rank of a job)?"""
        return bool(self.watch.signals) or self.end is not None or self.interval > 0

    def interval_due(self) -> bool:
        return self.interval > 0 and monotonic() - self.last_save >= self.interval

    def saved(self) -> None:
        self.last_save = monotonic()

    def stopped(self, due: StopDue, epoch: int, batches: int, writer: bool) -> None:
        """A stop's mid-epoch checkpoint (``epoch`` + ``batches``) is committed: training
        stops; the writer (one per job, not one per rank) requeues when asked."""
        self.stop_requested = True
        self.log.warning(f"{due.reason}: saved a mid-epoch checkpoint (epoch {epoch} + "
                         f"{batches} batches); stopping training")
        if writer:
            self.after_stop_save(due)

    def after_stop_save(self, due: StopDue) -> None:
        """Requeue under SLURM when asked (``ckpt_requeue``), logging the outcome.

        "auto": when the job's time is running out, which SIGUSR1 (``--signal=USR1@T``)
        or the wall-clock limit (``SLURM_JOB_END_TIME``) says; not after SIGTERM, which
        may be ``scancel``.
        """
        mode = self.requeue_mode
        time_is_up = due.signal == signal.SIGUSR1 or due.signal is None
        wanted = mode == "on" or (mode == "auto" and under_slurm() and time_is_up)
        if wanted:
            requeue(self.log.info)
