"""candle-ckpt: crash-safe checkpoint/restart for long deep-learning runs.

The CANDLE checkpoint API (``CandleCkpt``, ``CandleCkptKeras``, ``CandleCkptPyTorch``,
``CandleCheckpointCallback``, ``restart``, ``ckpt_parser``, ...) at top level. Keras and
torch are imported only when their backend is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .engine import CandleCkpt
from .errors import (
    CheckpointCorruptError,
    CheckpointDeleteError,
    CheckpointLockedError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointRestoreError,
    CheckpointWriteError,
    CkptError,
    CkptParamError,
    CkptParamTypeError,
    LockLostError,
    MetricNotFoundError,
    UnsafeFileError,
)
from .loading import export, load_state
from .params import (
    ParamRequired,
    ParamType,
    ckpt_defs,
    ckpt_parser,
    disabled,
    enabled,
    param,
    param_allowed,
    param_type_check,
    param_type_check_bool,
    param_type_check_float,
    param_type_check_int,
)
from .storage.integrity import DEFAULT_ALGORITHM

__version__ = "0.1.0"

_LAZY = {
    "CandleCkptKeras": ("backends.keras", "keras"),
    "CandleCheckpointCallback": ("backends.keras", "keras"),
    "MultiGPUCheckpoint": ("backends.keras", "keras"),
    "restart": ("backends.keras", "keras"),
    "restart_json": ("backends.keras", "keras"),
    "CandleCkptPyTorch": ("backends.torch", "torch"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, extra = _LAZY[name]
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except ImportError as err:
            raise ImportError(
                f"candle_ckpt.{name} needs the {extra} extra: in the candle-ckpt clone, "
                f"pip install -e '.[{extra}]'"
                f" ({err})"
            ) from err
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name == "checksum_file":
        from .logs import checksummed_line
        from .storage.integrity import ChecksumTally
        from .storage.integrity import checksum_file as _checksum_file

        def checksum_file(logger: Any, filename: Any) -> str:
            """Read file, compute checksum, return it as a string (default algorithm).

            A ``logging.Logger`` given is told ``checksummed: ...``, as the original's was.
            """
            tally = ChecksumTally()
            value = _checksum_file(filename, tally=tally)
            if hasattr(logger, "info"):
                logger.info(checksummed_line(tally.nbytes, tally.seconds))
            return value

        globals()[name] = checksum_file
        return checksum_file
    raise AttributeError(f"module 'candle_ckpt' has no attribute {name!r}")


__all__ = [
    "export",
    "load_state",
    "CandleCkpt",
    "CandleCkptKeras",
    "CandleCheckpointCallback",
    "CandleCkptPyTorch",
    "MultiGPUCheckpoint",
    "ParamRequired",
    "ParamType",
    "CkptError",
    "CkptParamError",
    "CkptParamTypeError",
    "CheckpointCorruptError",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointRestoreError",
    "CheckpointWriteError",
    "CheckpointDeleteError",
    "LockLostError",
    "UnsafeFileError",
    "MetricNotFoundError",
    "DEFAULT_ALGORITHM",
    "checksum_file",
    "ckpt_defs",
    "ckpt_parser",
    "disabled",
    "enabled",
    "param",
    "param_allowed",
    "param_type_check",
    "param_type_check_bool",
    "param_type_check_float",
    "param_type_check_int",
    "restart",
    "restart_json",
]
