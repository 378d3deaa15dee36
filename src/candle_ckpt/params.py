"""CANDLE checkpoint hyperparameters: types, conversion, validation, argparse/defs glue."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import CkptParamError, CkptParamTypeError


class ParamType(Enum):
    """Possible gParameters types (same member values as the original CANDLE)."""

    STRING = 1
    BOOLEAN = 2
    INTEGER = 3
    INTEGER_NN = 4  # non-negative
    INTEGER_GZ = 5  # greater than zero
    FLOAT = 6
    FLOAT_NN = 7  # non-negative


class ParamRequired:
    """Indicates that the user params must contain this key."""

    def __repr__(self) -> str:
        return "ParamRequired()"


_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}


def _get(gParameters: Any, key: str) -> tuple[bool, Any]:
    """Look a key up in a dict or an argparse.Namespace; (present, value)."""
    if gParameters is None:
        return False, None
    if isinstance(gParameters, Mapping):
        if key in gParameters:
            return True, gParameters[key]
        return False, None
    if hasattr(gParameters, key):
        return True, getattr(gParameters, key)
    return False, None


def param_type_check_bool(key: str, value: Any) -> bool:
    """Convert a bool-like value ("true", "0", 1, ...) to bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise CkptParamTypeError(
        f"parameter {key!r}: value {value!r} is not a boolean; "
        f"accepted: true/false, 1/0, yes/no, on/off"
    )


def param_type_check_int(key: str, value: Any, type_: ParamType) -> int:
    """Convert to int and check the sign constraint of ``type_``."""
    result: int
    if isinstance(value, bool):
        raise CkptParamTypeError(f"parameter {key!r}: value {value!r} is a boolean, not an integer")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            raise CkptParamTypeError(
                f"parameter {key!r}: value {value!r} is not an integer"
            ) from None
    else:
        raise CkptParamTypeError(f"parameter {key!r}: value {value!r} is not an integer")
    if type_ == ParamType.INTEGER_NN and result < 0:
        raise CkptParamError(f"parameter {key!r}: value {result} must be an integer >= 0")
    if type_ == ParamType.INTEGER_GZ and result <= 0:
        raise CkptParamError(f"parameter {key!r}: value {result} must be an integer > 0")
    return result


def param_type_check_float(key: str, value: Any, type_: ParamType) -> float:
    """Convert to float and check the sign constraint of ``type_``."""
    if isinstance(value, bool):
        raise CkptParamTypeError(f"parameter {key!r}: value {value!r} is a boolean, not a number")
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise CkptParamTypeError(f"parameter {key!r}: value {value!r} is not a number") from None
    except OverflowError:
        raise CkptParamError(f"parameter {key!r}: value {_short(value)} is too large for a "
                             "float; give a finite number") from None
    if type_ == ParamType.FLOAT_NN and not result >= 0:
        raise CkptParamError(f"parameter {key!r}: value {result} must be a number >= 0")
    return result


def param_type_check(key: str, value: Any, type_: ParamType) -> Any:
    """Check that value is convertible to ``type_`` and return it converted.

    Raises:
        CkptParamTypeError: (a TypeError, as the original) when it is not convertible.
        CkptParamError: when it converts but violates the type's range.
    """
    if value is None:
        return None
    if type_ == ParamType.STRING:
        if isinstance(value, (str, Path)):
            return str(value)
        raise CkptParamTypeError(f"parameter {key!r}: value {value!r} is not a string")
    if type_ == ParamType.BOOLEAN:
        return param_type_check_bool(key, value)
    if type_ in (ParamType.INTEGER, ParamType.INTEGER_NN, ParamType.INTEGER_GZ):
        return param_type_check_int(key, value, type_)
    if type_ in (ParamType.FLOAT, ParamType.FLOAT_NN):
        return param_type_check_float(key, value, type_)
    raise CkptParamError(f"parameter {key!r}: unknown ParamType {type_!r}")


def param_allowed(key: str, value: Any, allowed: Sequence[Any] | None) -> None:
    """Check that the value is one of ``allowed`` (no check when ``allowed`` is None)."""
    if allowed is None or value in allowed:
        return
    choices = ", ".join(repr(a) for a in allowed)
    raise CkptParamError(f"parameter {key!r}: value {value!r} is not allowed; accepted: {choices}")


def param(
    gParameters: Any,
    key: str,
    dflt: Any,
    type_: ParamType = ParamType.STRING,
    allowed: Sequence[Any] | None = None,
) -> Any:
    """Pull key from parameters with type checks and conversions.

    A key that is absent, or present with the value None, takes the default ``dflt``;
    if ``dflt`` is a :class:`ParamRequired`, that is an error.
    """
    present, value = _get(gParameters, key)
    if not present or value is None:
        if isinstance(dflt, ParamRequired) or dflt is ParamRequired:
            raise CkptParamError(f"parameter {key!r} is required but was not given")
        value = dflt
    result = param_type_check(key, value, type_)
    param_allowed(key, result, allowed)
    return result


def enabled(gParameters: Any, key: str) -> bool:
    """Is this parameter set to True?"""
    present, value = _get(gParameters, key)
    return present and value is not None and param_type_check_bool(key, value)


def disabled(gParameters: Any, key: str) -> bool:
    """Is this parameter set to False?"""
    present, value = _get(gParameters, key)
    return present and value is not None and not param_type_check_bool(key, value)


# ---------------------------------------------------------------------------------------
# The checkpoint hyperparameters: one table drives validation, argparse and defs.

DEFAULT_DIRECTORY = "./save"  # the spec's default ckpt_directory, when output_dir is unset
RESTART_MODES = ("off", "auto", "required")
KEEP_MODES = ("linear", "exponential", "all")
BEST_MODES = ("auto", "min", "max")
DISTRIBUTED_METRICS = ("mean", "rank0")


@dataclass(frozen=True)
class _Def:
    name: str
    type_: ParamType
    default: Any
    help: str
    allowed: tuple[Any, ...] | None = None


CKPT_PARAMS: tuple[_Def, ...] = (
    _Def("ckpt_restart_mode", ParamType.STRING, "auto",
         "Restart from the last checkpoint: off | auto | required", RESTART_MODES),
    _Def("ckpt_save_best", ParamType.BOOLEAN, True,
         "Save whenever ckpt_save_best_metric improves"),
    _Def("ckpt_save_best_metric", ParamType.STRING, "val_loss",
         "Metric (any key in the epoch's logs) tracked for the best checkpoint"),
    _Def("ckpt_save_best_mode", ParamType.STRING, "auto",
         "Direction of the best metric: auto | min | max", BEST_MODES),
    _Def("ckpt_skip_epochs", ParamType.INTEGER_NN, 0,
         "Number of initial epochs never saved (not even a new best or the final epoch)"),
    _Def("ckpt_save_interval", ParamType.INTEGER_NN, 1,
         "Save every N epochs and the final epoch; 0 saves nothing (no best, no final)"),
    _Def("ckpt_checksum", ParamType.BOOLEAN, False,
         "Store checksums of every file and verify them at restart"),
    _Def("ckpt_keep_mode", ParamType.STRING, "linear",
         "Which old checkpoints of this run to keep: linear | exponential | all", KEEP_MODES),
    _Def("ckpt_keep_limit", ParamType.INTEGER_GZ, 1000000,
         "Maximal number of checkpoints of this run to keep"),
    _Def("ckpt_keep_bytes", ParamType.STRING, None,
         "Disk budget for this run's checkpoints (e.g. '50G', '800M', '2TB', a number of "
         "bytes): the keep policy also deletes its oldest unprotected ones until they fit; "
         "none: no budget"),
    # No default here: ckpt_parser/ckpt_defs would inject it and hide output_dir.
    # read_settings applies the defaults (output_dir, else DEFAULT_DIRECTORY).
    _Def("ckpt_directory", ParamType.STRING, None,
         "Top directory for checkpoints (default: output_dir when given, else ./save)"),
    _Def("ckpt_metadata", ParamType.STRING, None,
         "Arbitrary string stored in every ckpt-info.json (job ID, host, ...)"),
    _Def("ckpt_save_weights_only", ParamType.BOOLEAN, False,
         "Save model weights without optimizer state"),
    _Def("ckpt_best_metric_last", ParamType.FLOAT, None,
         "Initial best metric value (default: read from the checkpoint restarted from)"),
    _Def("ckpt_async", ParamType.BOOLEAN, False,
         "Write checkpoints in a background thread (the training thread only copies state); "
         "a save in flight at exit or on SIGTERM is finished first"),
    _Def("ckpt_dedup", ParamType.BOOLEAN, False,
         "Store each large tensor/variable once per directory, as a shared object named by "
         "its content: a save writes only what changed since any checkpoint kept (for "
         "fine-tuning with frozen layers and keeping many checkpoints)"),
    _Def("ckpt_signals", ParamType.STRING, "auto",
         "Signals that mean 'save now and stop' (e.g. 'SIGUSR1,SIGTERM' or 'none'); auto: "
         "SIGUSR1 and SIGTERM under SLURM, none otherwise"),
    _Def("ckpt_requeue", ParamType.STRING, "auto",
         "After a stop-save under SLURM, 'scontrol requeue' the job: auto (after SIGUSR1 "
         "or the wall-clock limit) | on | off", ("auto", "on", "off")),
    _Def("ckpt_save_interval_seconds", ParamType.FLOAT_NN, 0.0,
         "Also save at the first batch boundary this many seconds after the previous save "
         "(0: off)"),
    _Def("ckpt_walltime_end", ParamType.STRING, "auto",
         "When the job ends (unix time or 'YYYY-MM-DD HH:MM:SS'); auto: SLURM_JOB_END_TIME "
         "if set; none: no limit"),
    _Def("ckpt_walltime_margin", ParamType.FLOAT_NN, 300.0,
         "Save and stop this many seconds before ckpt_walltime_end"),
    _Def("ckpt_distributed_metric", ParamType.STRING, "mean",
         "torch.distributed: the metric the save decision uses, the ranks' mean or rank 0's: "
         "mean | rank0", DISTRIBUTED_METRICS),
)


@dataclass(frozen=True)
class CkptSettings:
    """The validated checkpoint hyperparameters of one run."""

    restart_mode: str
    save_best: bool
    save_best_metric: str
    save_best_mode: str
    skip_epochs: int
    save_interval: int
    checksum: bool
    keep_mode: str
    keep_limit: int
    directory: Path
    directory_source: str  # why this directory: e.g. "ckpt_directory", "output_dir (...)"
    metadata: str | None
    epochs: int | None
    save_weights_only: bool
    best_metric_last: float | None
    async_save: bool
    dedup: bool = False
    signals: Any = "auto"  # as given (a string or a list); parsed by candle_ckpt.preempt
    requeue: str = "auto"
    save_interval_seconds: float = 0.0
    walltime_end: str = "auto"
    walltime_margin: float = 300.0
    distributed_metric: str = "mean"
    keep_bytes: int | None = None  # ckpt_keep_bytes, in bytes; None: no budget


def read_settings(gParameters: Any, *, epochs_required: bool = True) -> CkptSettings:
    """Validate every checkpoint hyperparameter of ``gParameters``.

    Raises:
        CkptParamError: naming the first bad key, its value and what is accepted.
    """
    if gParameters is not None and not isinstance(gParameters, (Mapping, argparse.Namespace)):
        raise CkptParamError(
            f"gParameters: {type(gParameters).__name__} is not accepted; "
            "pass a dict or an argparse.Namespace"
        )
    _, signals = _get(gParameters, "ckpt_signals")
    _, keep_bytes = _get(gParameters, "ckpt_keep_bytes")
    v = {d.name: param(gParameters, d.name, d.default, d.type_, d.allowed) for d in CKPT_PARAMS
         if not (d.name == "ckpt_signals" and isinstance(signals, (list, tuple)))
         and d.name != "ckpt_keep_bytes"}
    if v["ckpt_metadata"] is None:  # the older name
        v["ckpt_metadata"] = param(gParameters, "metadata", None, ParamType.STRING)
    epochs = param(
        gParameters, "epochs", ParamRequired() if epochs_required else None, ParamType.INTEGER_NN
    )
    directory, directory_source = _checkpoint_root(gParameters, v["ckpt_directory"])
    best_last = v["ckpt_best_metric_last"]
    if best_last is not None and math.isnan(best_last):
        raise CkptParamError(
            "parameter 'ckpt_best_metric_last': value nan is not accepted; give a number"
        )
    metric = v["ckpt_save_best_metric"]
    if v["ckpt_save_best"] and not metric:
        raise CkptParamError(
            "parameter 'ckpt_save_best_metric': value '' is empty; "
            "it is required when ckpt_save_best is true"
        )
    return CkptSettings(
        restart_mode=v["ckpt_restart_mode"],
        save_best=v["ckpt_save_best"],
        save_best_metric=metric,
        save_best_mode=v["ckpt_save_best_mode"],
        skip_epochs=v["ckpt_skip_epochs"],
        save_interval=v["ckpt_save_interval"],
        checksum=v["ckpt_checksum"],
        keep_mode=v["ckpt_keep_mode"],
        keep_limit=v["ckpt_keep_limit"],
        directory=Path(directory).expanduser(),
        directory_source=directory_source,
        metadata=v["ckpt_metadata"],
        epochs=epochs,
        save_weights_only=v["ckpt_save_weights_only"],
        best_metric_last=best_last,
        async_save=v["ckpt_async"],
        dedup=v["ckpt_dedup"],
        signals=v.get("ckpt_signals", signals),
        requeue=v["ckpt_requeue"],
        save_interval_seconds=v["ckpt_save_interval_seconds"],
        walltime_end=v["ckpt_walltime_end"],
        walltime_margin=v["ckpt_walltime_margin"],
        distributed_metric=v["ckpt_distributed_metric"],
        keep_bytes=parse_bytes("ckpt_keep_bytes", keep_bytes),
    )


_UNITS = {"": 1, "b": 1,
          **{p: 1024 ** (i + 1) for i, p in enumerate("kmgtpe")},
          **{p + "ib": 1024 ** (i + 1) for i, p in enumerate("kmgtpe")},
          **{p + "b": 1000 ** (i + 1) for i, p in enumerate("kmgtpe")}}


def parse_bytes(key: str, value: Any) -> int | None:
    """A size: bytes (an int, or a string of digits), or a number with a unit.

    K, M, G, T, P, E and KiB ... EiB are powers of 1024 (``"50G"`` is 50 GiB, as ``du -h``
    and SLURM write it); KB, MB, GB ... are powers of 1000. "none", "" and None: no size.

    Raises:
        CkptParamError: naming ``key``, the value and the accepted forms.
    """
    accepted = ("give a number of bytes or a size like '50G', '800M', '1.5T', '2TB' "
                "(K/M/G/T: powers of 1024; KB/MB/GB/TB: powers of 1000), or 'none'")
    if value is None:
        return None
    if isinstance(value, bool):
        raise CkptParamError(f"parameter {key!r}: value {value!r} is not a size; {accepted}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text in ("", "none", "off"):
            return None
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([a-z]*)", text)
        if m is None or m.group(2) not in _UNITS:
            raise CkptParamError(
                f"parameter {key!r}: value {value!r} is not a size; {accepted}")
        number, unit = float(m.group(1)), m.group(2)
    else:
        raise CkptParamError(f"parameter {key!r}: value {value!r} is not a size; {accepted}")
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise CkptParamError(
            f"parameter {key!r}: value {value!r} must be at least one byte; {accepted}")
    return int(size)


def unknown_key_warnings(gParameters: Any) -> list[str]:
    """A warning for each ``ckpt_*`` key that is not a checkpoint hyperparameter.

    A misspelt key (``ckpt_keep_limt``) would otherwise be ignored without a word, and
    the run would go on under the default it meant to change.
    """
    if isinstance(gParameters, Mapping):
        keys = list(gParameters)
    elif isinstance(gParameters, argparse.Namespace):
        keys = list(vars(gParameters))
    else:
        return []
    known = [d.name for d in CKPT_PARAMS]
    warnings = []
    for key in keys:
        if not isinstance(key, str) or not key.startswith("ckpt_") or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else \
            "the ckpt_* parameters are: " + ", ".join(known)
        warnings.append(f"parameter {_short(key)} is not a checkpoint parameter and is "
                        f"ignored; {hint}")
    return warnings


def _checkpoint_root(gParameters: Any, ckpt_directory: str | None) -> tuple[str, str]:
    """The top checkpoint directory and why it was chosen.

    ``ckpt_directory`` when given; absent or None (candle_lib's ``finalize_parameters``
    passes None), ``output_dir`` when given: candle_lib then checkpoints into
    ``output_dir/ckpts/{epochs,last,best}``, exactly our layout's paths under that root,
    so its runs restart here; else the spec's ``./save``.
    """
    if ckpt_directory is not None:
        return _non_empty("ckpt_directory", ckpt_directory), "ckpt_directory"
    output_dir = param(gParameters, "output_dir", None, ParamType.STRING)
    if output_dir is not None:
        return (_non_empty("output_dir", output_dir),
                "output_dir (ckpt_directory is not set)")
    return DEFAULT_DIRECTORY, "default ./save (neither ckpt_directory nor output_dir is set)"


def _non_empty(key: str, directory: str) -> str:
    if not directory.strip():
        raise CkptParamError(
            f"parameter {key!r}: value {directory!r} is empty; give a directory path"
        )
    if "\0" in directory:
        raise CkptParamError(
            f"parameter {key!r}: value {directory!r} contains a NUL character, which no "
            "path can hold; give a directory path"
        )
    return directory


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + "..." + text[-10:]


def _str2bool(text: str) -> bool:
    try:
        return param_type_check_bool("<argument>", text)
    except CkptParamError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _argparse_type(type_: ParamType) -> Any:
    if type_ == ParamType.BOOLEAN:
        return _str2bool
    if type_ in (ParamType.INTEGER, ParamType.INTEGER_NN, ParamType.INTEGER_GZ):
        return int
    if type_ in (ParamType.FLOAT, ParamType.FLOAT_NN):
        return float
    return str


def ckpt_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the checkpoint hyperparameters to an argparse parser and return it."""
    for d in CKPT_PARAMS:
        kwargs: dict[str, Any] = {
            "type": _argparse_type(d.type_),
            "default": d.default,
            "help": d.help if "(default:" in d.help else f"{d.help} (default: {d.default!r})",
        }
        if d.allowed is not None:
            kwargs["choices"] = list(d.allowed)
        parser.add_argument("--" + d.name, **kwargs)
    return parser


def ckpt_defs(defs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``defs`` extended with CANDLE parameter definitions for the checkpoint keys."""
    new_defs = []
    for d in CKPT_PARAMS:
        entry: dict[str, Any] = {
            "name": d.name,
            "type": _argparse_type(d.type_),
            "default": d.default,
            "help": d.help,
        }
        if d.allowed is not None:
            entry["choices"] = list(d.allowed)
        new_defs.append(entry)
    return list(defs) + new_defs


# ---------------------------------------------------------------------------------------
# Arguments of the engine's calls

def make_root(d: Path, source: str) -> None:
    """Create the checkpoint root, or CkptParamError naming the parameter it came from."""
    key = "output_dir" if source.startswith("output_dir") else "ckpt_directory"
    if d.exists() and not d.is_dir():
        raise CkptParamError(f"parameter {key!r}: value {str(d)!r} is a file; "
                             "give a directory (it is created if missing)")
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CkptParamError(
            f"parameter {key!r}: value {str(d)!r} is not writable "
            f"({str(probe)!r} denies write access); give a writable directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CkptParamError(
            f"parameter {key!r}: value {str(d)!r} cannot be created: {err}") from err


def direction_arg(direction: Any) -> str:
    if direction not in ("+", "-"):
        raise CkptParamError(f"direction: value {direction!r} is not allowed; accepted: '+', '-'")
    return str(direction)


def epoch_arg(epoch: Any, name: str = "epoch") -> int:
    """A 0-based epoch (or batch) index argument, as an int, or a clear error."""
    if isinstance(epoch, bool) or not hasattr(epoch, "__index__") and not (
            isinstance(epoch, float) and epoch.is_integer()):
        raise CkptParamError(f"{name}: value {epoch!r} is not accepted; pass a 0-based "
                             f"{name} index (an int >= 0)")
    value = int(epoch)
    if value < 0:
        raise CkptParamError(f"{name}: value {value} is negative; pass a 0-based {name} "
                             "index (an int >= 0)")
    return value
