"""``SaveRecord`` <-> ``ckpt-info.json``: the schema of a checkpoint's metadata, in one place.

Pure: no I/O. :func:`to_info` builds the dict the saver writes; :func:`read_record`
checks a parsed dict and returns what restart needs, or raises ``ValueError`` saying
which field is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .storage.integrity import DISABLED
from .storage.layout import TIME_FORMAT
from .storage.objects import ALGORITHM as OBJECTS_ALGORITHM

FORMAT_VERSION = 1

FIRST = "__FIRST__"


@dataclass(frozen=True)
class SaveRecord:
    """What the engine decided about one save: frozen before the writer starts.

    ``epoch`` is 1-based (completed epochs). ``best_metric_last``/``epoch_best`` are the
    best *including* this epoch when it is a new best.
    """

    epoch: int
    metric_value: float | None
    is_best: bool
    best_metric_last: float | None
    epoch_best: int | None
    save_best_metric: str
    best_mode: str
    checksum_algorithm: str | None
    metadata: str | None
    backend: str
    time: float  # seconds since the epoch (wall clock) when the save was decided
    time_previous: float | None  # the previous save's ``time`` in this run, if any
    batch: int = 0  # > 0: a mid-epoch checkpoint, ``batch`` batches into epoch ``epoch``+1
    reason: str = ""  # why it was saved (the policy's words), for the log


@dataclass(frozen=True)
class Written:
    """What a backend wrote: the main model file's name and extra ckpt-info fields."""

    model_file: str
    info: dict[str, Any]


def to_info(record: SaveRecord, written: Written, files: dict[str, Any],
            objects: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ckpt-info.json of a checkpoint (the spec's fields, then ours, then the backend's).

    ``objects``: the shared objects it references (``ckpt_dedup``), name -> {"size"};
    their names are their checksums (``objects_algorithm``).
    """
    elapsed: Any = FIRST if record.time_previous is None else round(
        record.time - record.time_previous, 6)
    model_entry = files.get(written.model_file) or {}
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "epoch": record.epoch,
        "batch": record.batch,
        "partial": record.batch > 0,
        "save_best_metric": record.save_best_metric,
        "best_metric_last": record.best_metric_last,
        "epoch_best": record.epoch_best,
        "best_mode": record.best_mode,
        "metric_value": record.metric_value,
        "model_file": written.model_file,
        "checksum": model_entry.get("checksum", DISABLED),
        "checksum_algorithm": record.checksum_algorithm,
        "files": files,
        "timestamp": datetime.fromtimestamp(record.time).strftime(TIME_FORMAT),
        "time_elapsed": elapsed,
        "metadata": record.metadata,
        "backend": record.backend,
    }
    if objects is not None:
        info["objects_algorithm"] = OBJECTS_ALGORITHM
        info["objects"] = objects
    for key, value in written.info.items():
        info.setdefault(key, value)  # a backend never overrides the engine's fields
    return info


@dataclass(frozen=True)
class InfoRecord:
    """The fields of a ckpt-info.json that restart relies on, type-checked."""

    epoch: int
    best_metric_last: float | None
    epoch_best: int | None
    original_candle: bool  # no format_version: written by the original CANDLE code
    batch: int = 0  # batches done into epoch ``epoch``+1 (a mid-epoch checkpoint)


def as_metric(value: Any, name: str = "metric_value") -> float | None:
    """A metric as a float (None stays None); ValueError names the field otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name} {value!r} is not a number") from None
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(f"{name} is an integer too large for a float") from None
    return result


def read_record(info: dict[str, Any]) -> InfoRecord:
    """Check the fields restart uses; ValueError says which one is wrong."""
    epoch = info.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch {_short(epoch)} is not a non-negative integer")
    best = as_metric(info.get("best_metric_last"), "best_metric_last")
    if best is not None and math.isnan(best):
        best = None
    epoch_best = info.get("epoch_best")
    if isinstance(epoch_best, bool) or not isinstance(epoch_best, int) or epoch_best < 0:
        epoch_best = None
    batch = info.get("batch", 0)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch {_short(batch)} is not a non-negative integer")
    if bool(info.get("partial", False)) != (batch > 0):
        raise ValueError(f"partial {_short(info.get('partial'))} contradicts batch {batch}")
    return InfoRecord(epoch, best, epoch_best, "format_version" not in info, batch)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
