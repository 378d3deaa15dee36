"""What a restart leaves to apply when training begins, kept per model: the one place
where state is carried from one call to a later one outside an object's own attributes.

Why it exists: a Keras restart may run before the model is compiled (NT3 does), when
its optimizer does not exist yet, so the checkpoint's optimizer state can only be
applied when training begins; and ``fit()`` may draw from the global RNGs between
restart and the first epoch, so those are set again then. The callback that trains is
often not the engine that restarted: the spec's older API restarts through the
module-level :func:`~candle_ckpt.backends.keras.restart`, which builds and closes an
engine of its own, and then a ``CandleCheckpointCallback`` is built separately and
given to ``fit()``. The model is all the two share, so what is pending is kept per
model (weakly: a model that is gone takes its pending state with it) in
:data:`PENDING`, which every ``KerasBackend`` is given when it is built.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ...errors import CheckpointMismatchError
from ...logs import CkptLog
from .data import DataOrder
from .rng_file import RngFile, apply_global


@dataclass
class Pending:
    """What restart could not apply before training begins (the optimizer may not exist)."""

    rng: RngFile | None = None
    optimizer: list[np.ndarray] | None = None
    optimizer_type: str | None = None
    source: str = ""
    legacy: bool = False  # an original CANDLE model.h5: a misfit starts the optimizer fresh
    data_order: DataOrder | None = None  # where the training data resumes (data.py)


class PendingRestores:
    """Per model: what the callback applies when training begins (module docstring)."""

    def __init__(self) -> None:
        self._by_model: weakref.WeakKeyDictionary[Any, Pending] = weakref.WeakKeyDictionary()

    def of(self, model: Any) -> Pending:
        """The model's pending state, to add to (created empty)."""
        return self._by_model.setdefault(model, Pending())

    def data_order(self, model: Any) -> DataOrder | None:
        """The position in the training data a restart left for the model, if any."""
        pending = self._by_model.get(model) if model is not None else None
        return pending.data_order if pending is not None else None

    def apply(self, model: Any, log: CkptLog) -> None:
        """Training begins: apply the optimizer state (validated), then the global RNGs.

        Raises:
            CheckpointMismatchError: the optimizer does not fit the state; it stays
                pending, so a retried fit() with a fitting optimizer still gets it
                instead of silently starting fresh.
        """
        pending = self._by_model.get(model)
        if pending is None:
            return
        if pending.optimizer is not None:
            _apply_optimizer(model, pending, log)
        self._by_model.pop(model, None)
        if pending.rng is not None:
            apply_global(pending.rng)  # its problems were reported when restart applied it
            log.debug("re-applied the checkpoint's global RNG states as training begins")


# The process's one registry (see the module docstring).
PENDING = PendingRestores()


def _apply_optimizer(model: Any, pending: Pending, log: CkptLog) -> None:
    """Check the pending optimizer state against the model's optimizer, then assign it."""
    optimizer = getattr(model, "optimizer", None)
    values = pending.optimizer or []
    if optimizer is None:
        log.warning(f"{pending.source}: the model has no optimizer when training begins; "
                    "the checkpoint's optimizer state is not restored")
        return
    if pending.optimizer_type is not None and \
            pending.optimizer_type != type(optimizer).__name__:
        raise CheckpointMismatchError(
            f"{pending.source} does not fit the optimizer: it holds "
            f"{pending.optimizer_type} state, the model's optimizer is "
            f"{type(optimizer).__name__}"
        )
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = optimizer.variables
    if pending.legacy and [tuple(v.shape) for v in values] != \
            [tuple(v.shape) for v in variables]:
        log.warning(f"{pending.source}: its optimizer state ({len(values)} variables) "
                    f"does not fit {type(optimizer).__name__} ({len(variables)}; another "
                    "Keras version or an optimizer never stepped); the optimizer starts "
                    "fresh")
        return
    if len(values) != len(variables):
        raise CheckpointMismatchError(
            f"{pending.source} does not fit the optimizer: {len(values)} optimizer "
            f"variables in the checkpoint, {len(variables)} in "
            f"{type(optimizer).__name__}"
        )
    for variable, value in zip(variables, values, strict=True):
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointMismatchError(
                f"{pending.source} does not fit the optimizer: {variable.path} is "
                f"{tuple(value.shape)} in the checkpoint, {tuple(variable.shape)} in "
                "the optimizer"
            )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    log.info(f"restored the optimizer state ({len(values)} variables) from "
             f"{pending.source} as training begins")

