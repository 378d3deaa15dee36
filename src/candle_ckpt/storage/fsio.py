"""Durable file-system steps: fsync of a directory, durable strict JSON, and the crash
seam the commit protocol's steps report to.

Each step of the commit protocol calls :func:`step` with its name, so tests can crash
exactly there (``candle_ckpt.storage.fsio._on_step``); production never sets it.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .safeio import create_exclusive

# Crash injection for tests: called with each step's name. Never set in production.
_on_step: Callable[[str], None] | None = None


def step(name: str) -> None:
    """Report that the step ``name`` of the commit protocol is done (see module doc)."""
    if _on_step is not None:
        _on_step(name)


# fsync of a directory is not supported everywhere (Windows cannot open one; some
# filesystems answer EINVAL): durability is then the filesystem's. Anything else (EIO,
# ENOSPC, EMFILE) is a real failure and is raised.
_FSYNC_UNSUPPORTED = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR,
     errno.EACCES, errno.EPERM}
)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable.

    Raises:
        OSError: the directory cannot be opened or synced for a reason other than the
            platform not supporting it (EIO, ENOSPC, EMFILE ...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno in _FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively, so the JSON stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_durable(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON to ``path`` atomically and durably.

    A new file (O_EXCL|O_NOFOLLOW) beside it is replaced over ``path``: whatever was at
    ``path`` (a planted link included) is replaced, never followed or truncated.

    Raises:
        OSError: writing, fsync or the rename failed (ENOSPC, EMFILE ...).
    """
    text = json.dumps(json_safe(data), indent=1, allow_nan=False, ensure_ascii=True)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        with os.fdopen(create_exclusive(tmp), "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
