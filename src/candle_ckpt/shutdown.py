"""Interpreter exit and SIGTERM while a background (``ckpt_async``) save is in flight.

Training scripts often end right after their last ``ckpt_epoch``, without
``on_train_end`` or ``close``: the last epoch's checkpoint is then still being written.
It is never lost silently:

- The save thread is not a daemon, so interpreter exit waits for it (``threading``
  joins such threads before the ``atexit`` handlers run).
- :func:`_at_exit`, an ``atexit`` handler, waits for every save still in flight and
  prints the failure of any that nobody was told of (no ``wait``/``close`` raised it)
  on stderr, then ends the process with status 1. Once the script has returned,
  ``os._exit`` is the only way to change the status; the ``atexit`` handlers that
  would have run after this one are skipped (logging's is run first).
- SIGTERM's default action would kill the process mid-write. While a save is in
  flight, and only where SIGTERM has its default disposition, :func:`_on_sigterm`
  defers it: the save finishes and is committed, then the signal is delivered again
  with the default disposition, so the process still ends by SIGTERM. A handler of the
  user's or of ``ckpt_signals`` (pre-emption) is left alone; one installed over ours
  that chains to it finds ours doing nothing, as the default disposition would.

The savers are held weakly, so an engine that goes out of scope is still collected
(its ``__del__`` waits for its save and hands a failure it cannot raise to
:func:`report`).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from types import FrameType
from typing import Protocol


class BackgroundSaver(Protocol):
    """What this module needs of an ``AsyncSaver``."""

    def failure(self) -> str | None:
        """The failure of a save that ended, if nobody was told of it; never blocks."""

    def wait_at_exit(self) -> str | None:
        """Wait for the save in flight; its failure, if nobody was told of it."""


_savers: weakref.WeakSet[BackgroundSaver] = weakref.WeakSet()
_busy: set[threading.Thread] = set()  # saves in flight (changed without a lock: see below)
_pending: signal.Signals | None = None  # a SIGTERM deferred until _busy is empty
_reported = False  # a failure was printed on stderr: the exit status must say so


def register(saver: BackgroundSaver) -> None:
    """Wait for ``saver`` (held weakly) at interpreter exit and report its failure."""
    _savers.add(saver)


def save_started(thread: threading.Thread) -> None:
    """A save is about to run on ``thread`` (called on the thread that submits it).

    From the main thread, SIGTERM is deferred from now on if it has the default
    disposition (handlers can only be installed there).
    """
    _busy.add(thread)
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # an embedding that refuses handlers: the default stays
        pass


def save_ended(thread: threading.Thread) -> None:
    """The save on ``thread`` is committed or failed (called last on that thread)."""
    # The signal handler sets _pending, then reads _busy; this thread empties _busy,
    # then reads _pending: whichever comes second sees the other's write, so a deferred
    # SIGTERM is always delivered again, without a lock the handler might find held.
    _busy.discard(thread)
    if _pending is not None and not _busy:
        os.kill(os.getpid(), _pending)  # its handler, on the main thread, terminates


def settle() -> None:
    """Nothing of this saver in flight: give SIGTERM its default disposition back.

    Called on the thread that waited for a save; only the main thread can change
    handlers. A SIGTERM deferred meanwhile terminates the process now.
    """
    if _busy or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
            return
        if _pending is not None:
            _terminate(_pending)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass


def report(message: str) -> None:
    """Print a save's failure that could not be raised to anyone; exit status 1 then."""
    global _reported
    _reported = True
    try:
        print(f"candle-ckpt: {message}", file=sys.stderr, flush=True)
    except Exception:  # no stderr any more (late in interpreter shutdown)
        pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _pending
    if signal.getsignal(signum) is not _on_sigterm:
        return  # chained to by a handler installed over ours: the default would not run
    _pending = signal.Signals(signum)
    if _busy:
        return  # save_ended() delivers it again once the saves are committed
    _terminate(_pending)


def _terminate(signum: signal.Signals) -> None:
    """End the process by ``signum``'s default action, as if it had never been deferred."""
    for saver in list(_savers):
        message = saver.failure()
        if message is not None:
            report(message)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _at_exit() -> None:
    for saver in list(_savers):
        message = saver.wait_at_exit()
        if message is not None:
            report(f"at interpreter exit: {message}")
    if _reported:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(1)


def _forget_in_child() -> None:
    """A fork()ed child has none of its parent's save threads: nothing to wait for."""
    global _pending, _reported
    _savers.clear()
    _busy.clear()
    _pending, _reported = None, False
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
