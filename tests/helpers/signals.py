"""Driving a child process that reports each batch and waits: signal it at a chosen one."""

from __future__ import annotations

import os
import signal
import subprocess


def drive(proc: subprocess.Popen[str], at: str, signals: list[signal.Signals],
          timeout: float = 300) -> bool:
    """Answer every line the child prints; when the line ``at`` appears, send ``signals``
    first. Waits for the child to exit; returns whether ``at`` was seen (and signalled)."""
    assert proc.stdin is not None and proc.stdout is not None
    sent = False
    for line in proc.stdout:
        if line.strip() == at and not sent:
            for sig in signals:
                os.kill(proc.pid, sig)
            sent = True
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except BrokenPipeError:
            break
    proc.wait(timeout=timeout)
    return sent
