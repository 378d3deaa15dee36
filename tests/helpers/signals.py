"""Driving child processes that wait for a line on stdin after each step (a handshake),
and signalling one of them at an exact step."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

from .process import send_signal_delivered


def drive(proc: subprocess.Popen[str], at: str, signals: list[signal.Signals]) -> float:
    """Ack every handshake (and only those: an extra ack would let the child run ahead);
    when the line ``at`` appears, send ``signals`` first.

    Returns the seconds from the signal to the child's exit.
    """
    assert proc.stdin is not None and proc.stdout is not None
    sent = None
    for line in proc.stdout:
        if line.strip() == at and sent is None:
            for sig in signals:
                send_signal_delivered(proc.pid, sig)
            sent = time.monotonic()
        if not is_handshake(line):
            continue  # a log line (the async writer's among them): the child waits for none
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except BrokenPipeError:
            break
    proc.wait(timeout=120)
    assert sent is not None, f"never saw {at!r}"
    return time.monotonic() - sent


def is_handshake(line: str) -> bool:
    """A line after which the child waits for one on stdin: ``ready`` or ``batch ...``."""
    text = line.strip()
    return text == "ready" or text.startswith("batch ")


def drive_all(procs: list[subprocess.Popen[str]], target: int, at: str,
              sig: signal.Signals, timeout: float = 120.0) -> list[str]:
    """Ack every handshake of every process (each on a thread: they wait for each other
    in collectives); send ``sig`` to ``procs[target]`` when it prints ``at``, and let it
    go on once the signal is taken. Returns each process's stdout."""
    outputs = [""] * len(procs)
    sent = threading.Event()

    def pump(index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            outputs[index] += line
            if index == target and line.strip() == at and not sent.is_set():
                send_signal_delivered(proc.pid, sig)
                sent.set()
            if not is_handshake(line):
                continue
            try:
                proc.stdin.write("\n")
                proc.stdin.flush()
            except BrokenPipeError:
                break

    threads = [threading.Thread(target=pump, args=(i, p), daemon=True)
               for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for t in threads:
        t.join(timeout=10)
    assert sent.is_set(), f"process {target} never printed {at!r}"
    return outputs
