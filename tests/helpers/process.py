"""Child processes that import the tests' helpers (``tests.helpers``) as a package."""

from __future__ import annotations

import os
import socket
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
