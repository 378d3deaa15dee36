"""Child processes that import the tests' helpers (``tests.helpers``) as a package."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

# The directory that holds the ``tests`` package: the repository root.
ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """This process's environment with ROOT on PYTHONPATH, after what is there already
    (so a ``candle_ckpt`` put first on it, as the mutation script does, still wins)."""
    current = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [current, str(ROOT)])))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_signal_delivered(pid: int, sig: int, timeout: float = 10.0) -> None:
    """Send ``sig`` to ``pid`` and return once one of its threads has taken it.

    A signal is handled on whichever thread the kernel hands it to, whenever that thread
    next runs: on a loaded machine, tens of milliseconds later, while the main thread
    trains on. Tests that say "signalled after batch k" wait here (Linux: the signal has
    left the process's and every thread's pending set) before letting the child go on.
    Elsewhere it only sends.
    """
    os.kill(pid, sig)
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return
    bit = 1 << (sig - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            masks = [_pending_mask(proc / "status", "ShdPnd")]
            masks += [_pending_mask(task / "status", "SigPnd")
                      for task in (proc / "task").iterdir()]
        except OSError:  # the process or one of its threads ended meanwhile
            continue
        if not any(mask & bit for mask in masks):
            return
        time.sleep(0.001)
    raise TimeoutError(f"signal {sig} was not taken by process {pid} within {timeout}s")


def _pending_mask(status: Path, field: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    return 0
