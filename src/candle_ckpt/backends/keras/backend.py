"""``KerasBackend``: the backend protocol (``backends/base.py``) for a Keras 3 model.

A checkpoint is two files:

- ``model.weights.h5``: every variable Keras' own ``save_weights`` walks (layers, then the
  optimizer unless ``ckpt_save_weights_only``), in exactly Keras' layout, so plain
  ``model.load_weights()`` reads it (``stores.py``);
- ``rng-state.json``: the seed-generator and global RNG states (``rng_file.py``);
- ``data-order.json``, when training reads data made by ``CandleCkptKeras.dataset``: its
  shape and the position in it, for an exact mid-epoch resume (``data.py``).

Loading never deserializes a model (no ``load_model``): it reads weights into the user's
model, so nothing in a file can run code; every value is read and checked before any is
assigned (``reading.py``; the original CANDLE's ``model.h5`` in ``legacy.py``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from ...errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointRestoreError,
    CkptParamError,
)
from ...logs import CkptLog
from ..base import UNKNOWN_PROGRESS, CaptureBuffers, Progress, Restored, Written, member_name
from . import objects as keras_objects
from . import rng_file
from .data import DATA_ORDER_FILE, DataOrder, ResumableData
from .deferred import PendingRestores
from .legacy import read_legacy_weights
from .reading import read_optimizer_vars, read_weights
from .rng_file import RNG_FILE, RngFile
from .stores import Entries, capture_weights, reading_store_class, write_weights

if TYPE_CHECKING:
    from ...storage.sink import FileSink

MODEL_FILE = "model.weights.h5"
LEGACY_MODEL_FILE = "model.h5"


@dataclass
class KerasSnapshot:
    """Host-memory copy of everything a checkpoint holds."""

    weights: Entries | None
    weights_file_bytes: bytes | None  # fallback when Keras' saving walk is unavailable
    rng: dict[str, Any] = field(default_factory=dict)
    has_optimizer: bool = False
    optimizer_type: str | None = None
    data_order: DataOrder | None = None


class KerasBackend:
    """The backend protocol for a Keras 3 model (any of its backends).

    ``pending``: where a restart leaves what is applied when training begins
    (``deferred.py``).
    """

    def __init__(self, log: CkptLog, weights_only: bool, pending: PendingRestores) -> None:
        self.log = log
        self.weights_only = weights_only
        self.pending = pending
        self.model: Any = None
        self.data: ResumableData | None = None  # the training data, when dataset() made it
        # The arrays of the last capture: the next one copies into them (the engine
        # captures only when no save is in flight), so memory stays at one extra copy.
        self.buffers = CaptureBuffers()


    def require_model(self) -> Any:
        if self.model is None:
            raise CkptParamError(
                "no model: call set_model(model) or restart(model), or pass the callback "
                "to model.fit()"
            )
        return self.model

    # --------------------------------------------------------------- saving
    def capture(self, live: bool, progress: Progress = UNKNOWN_PROGRESS) -> KerasSnapshot:
        """The weights (copies, or with ``live`` views where the backend allows) and RNGs.

        ``progress`` goes into ``data-order.json`` with the training data's shape, when
        that data was made by ``dataset()`` (the weights files hold no epoch).
        """
        model = self.require_model()
        if not model.built:
            raise CkptParamError("the model is not built; build it (or call it once) first")
        if hasattr(model, "jax_state_sync"):
            # Inside a jax epoch the trainer holds the state outside the variables (and
            # purges them); sync first, as Keras' own Callback.model does. A no-op between
            # epochs and on the other backends' models, which lack the method.
            model.jax_state_sync()
        optimizer = getattr(model, "optimizer", None)
        skip = [optimizer] if (self.weights_only and optimizer is not None) else []
        rng = rng_file.capture(model)
        has_optimizer = optimizer is not None and not skip
        opt_type = type(optimizer).__name__ if has_optimizer else None
        data_order = None
        if self.data is not None and progress.epoch is not None:
            data_order = self.data.record(progress.epoch, progress.batch or 0)
        try:
            entries = capture_weights(model, skip, self.buffers.previous(live=False),
                                      share=live)
            if not live:  # never keep views of live variables as buffers to copy into
                self.buffers.keep(False, entries)
            return KerasSnapshot(entries, None, rng, has_optimizer, opt_type, data_order)
        except (ImportError, AttributeError, TypeError, ValueError) as err:
            # Keras' internal saving walk changed: fall back to save_weights into memory.
            self.log.debug(f"recording store unavailable ({err}); using save_weights")
        from keras.src.saving import saving_lib

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            saving_lib.save_weights_only(model, str(path), objects_to_skip=skip or None)
            data = path.read_bytes()
        return KerasSnapshot(None, data, rng, has_optimizer, opt_type, data_order)

    def write(self, snapshot: KerasSnapshot, sink: FileSink) -> Written:
        model_file = MODEL_FILE
        if sink.objects is not None and snapshot.weights is not None:
            # ckpt_dedup: large variables as shared objects, named in an index
            keras_objects.write_index(snapshot.weights, sink)
            model_file = keras_objects.INDEX_FILE
        elif snapshot.weights is not None:
            # By path, then re-read once for the checksum: building the HDF5 image in
            # memory and streaming it through sink.open measured ~40% slower (h5py's
            # writes into a BytesIO plus the copy out cost more than the re-read).
            write_weights(snapshot.weights, sink.path(MODEL_FILE))
        else:
            assert snapshot.weights_file_bytes is not None
            with sink.open(MODEL_FILE) as f:
                f.write(snapshot.weights_file_bytes)
        with sink.open(RNG_FILE) as f:
            f.write(json.dumps(snapshot.rng, allow_nan=False).encode("utf-8"))
        data_info: dict[str, Any] = {}
        if snapshot.data_order is not None:
            with sink.open(DATA_ORDER_FILE) as f:
                f.write(snapshot.data_order.to_json())
            data_info["data_order_file"] = DATA_ORDER_FILE
        return Written(model_file, {
            "weights_only": bool(self.weights_only),
            "optimizer_state": snapshot.has_optimizer,
            "optimizer_type": snapshot.optimizer_type,
            "keras_version": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "rng_file": RNG_FILE,
            "rng_streams": rng_file.streams(snapshot.rng),
            **data_info,
        })

    # --------------------------------------------------------------- restoring
    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        """Check the weights, optimizer and RNG files against the model; change nothing."""
        model = self.require_model()
        if not model.built:
            raise CkptParamError(
                "the model is not built; build it (model.build(shape) or call it once) "
                "before restart so its weights can be loaded"
            )
        model_file = member_name(info, "model_file", LEGACY_MODEL_FILE)
        path = Path(directory) / model_file
        rng_path = Path(directory) / member_name(info, "rng_file", RNG_FILE)
        notes: list[str] = []
        rng: RngFile | None = None
        if rng_path.is_file():
            rng = rng_file.read(rng_path, model)
        elif "format_version" in info:
            raise CheckpointCorruptError(f"{rng_path}: missing")
        else:
            notes.append(f"{directory}: no RNG state (original CANDLE checkpoint); seed "
                         "generators keep their current state")
        data_order = self._check_data_order(Path(directory), info, notes)
        if model_file == keras_objects.INDEX_FILE:
            apply_weights = self._plan_native(model, path, info, notes,
                                              keras_objects.read_index(directory, info))
        elif model_file.endswith(".weights.h5"):
            apply_weights = self._plan_native(model, path, info, notes)
        elif model_file.endswith((".h5", ".hdf5")):
            apply_weights = self._plan_legacy_h5(model, path)
        else:
            raise CheckpointCorruptError(
                f"{path}: model_file {model_file!r} is not a Keras weights file "
                "(.weights.h5 or legacy .h5)"
            )

        def apply() -> list[str]:
            # Everything was read and checked above, so only Keras itself can fail here
            # (a layer's own load_own_variables, a device out of memory): by then some
            # variables may hold this checkpoint's values. Say so rather than let restart
            # fall back or start from scratch over a model that is neither.
            try:
                problems = apply_weights()
                if rng is not None:
                    problems += self._apply_rng(model, rng)
                if data_order is not None:
                    # Kept for the callback that trains (it may not exist yet) and given
                    # to the data now if there is any (checked above).
                    self.pending.of(model).data_order = data_order
                    if self.data is not None:
                        self.data.resume_from(data_order)
            except Exception as err:
                raise CheckpointRestoreError(
                    f"{path}: copying the checked values into the model failed part-way "
                    f"({type(err).__name__}: {err}); the model and its optimizer may hold "
                    "some of them: build them anew before restarting again"
                ) from err
            return problems

        return Restored(apply, notes)

    def _check_data_order(self, directory: Path, info: dict[str, Any],
                          notes: list[str]) -> DataOrder | None:
        """Read and check ``data-order.json``, if the checkpoint has one.

        Raises:
            CheckpointCorruptError: unreadable, or its position is not the checkpoint's.
            CheckpointMismatchError: the live training data does not fit a mid-epoch one.
        """
        batch = info.get("batch", 0)
        if "data_order_file" not in info:
            if self.data is not None and isinstance(batch, int) and batch > 0:
                notes.append(f"{directory}: no {DATA_ORDER_FILE} (the run that wrote it did "
                             "not read its data through dataset()): the interrupted epoch is "
                             "trained from its first batch")
            return None
        path = directory / member_name(info, "data_order_file", DATA_ORDER_FILE)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise CheckpointCorruptError(f"{path}: cannot be read ({err})") from None
        order = DataOrder.from_json(raw, str(path))
        if (order.epoch, order.batch) != (info.get("epoch"), batch):
            raise CheckpointCorruptError(
                f"{path}: records epoch {order.epoch} + {order.batch} batches, its "
                f"checkpoint is epoch {info.get('epoch')!r} + {batch!r} batches")
        if self.data is not None:
            notes.extend(self.data.check_resume(order, str(path)))
        return order

    def _plan_native(self, model: Any, path: Path, info: dict[str, Any],
                     notes: list[str], indexed: Entries | None = None) -> Any:
        """Read and check a ``.weights.h5`` whole (or, ``indexed``, the values a
        ``ckpt_dedup`` index named, already read); return the function that assigns it."""
        from keras.src.saving import saving_lib

        optimizer = getattr(model, "optimizer", None)
        weights_only = bool(info.get("weights_only")) or not info.get("optimizer_state", True)
        saved_type = info.get("optimizer_type")
        deferred: list[np.ndarray] | None = None
        skip: list[Any] = []
        if weights_only:
            if optimizer is not None:
                skip = [optimizer]
                notes.append(f"{path.name}: weights only; the optimizer starts fresh")
        elif optimizer is None:
            # Restart before compile() (NT3 does this): keep the state for on_train_begin.
            deferred = read_optimizer_vars(path) if indexed is None else \
                keras_objects.optimizer_vars(indexed)
            notes.append(f"{path.name}: the model is not compiled yet; its optimizer state is "
                         "applied when training begins")
        else:
            if isinstance(saved_type, str) and saved_type != type(optimizer).__name__:
                raise CheckpointMismatchError(
                    f"{path.name} does not fit the optimizer: it holds {saved_type} state, "
                    f"the model's optimizer is {type(optimizer).__name__}"
                )
            if not optimizer.built:
                # Keras skips an unbuilt optimizer's variables (with a mere warning).
                optimizer.build(model.trainable_variables)
        values = read_weights(model, path, skip) if indexed is None else \
            keras_objects.check_against(model, skip, indexed, path.name)

        def apply() -> list[str]:
            # Keras' own load walk (each layer's load_own_variables), fed from memory.
            saving_lib._load_state(
                model, weights_store=reading_store_class()(values), assets_store=None,
                inner_path="", skip_mismatch=False,
                visited_saveables={id(o) for o in skip}, failed_saveables=None,
                error_msgs=None,
            )
            if deferred is not None:
                pending = self.pending.of(model)
                pending.optimizer = deferred
                pending.optimizer_type = saved_type if isinstance(saved_type, str) else None
                pending.source = str(path)
            return []

        return apply

    def _plan_legacy_h5(self, model: Any, path: Path) -> Any:
        """Read and check an original CANDLE ``model.h5`` (model.save); return what assigns it.

        The weights are paired with the model layer by layer, as Keras' legacy loader
        pairs them; a model that does not fit raises CheckpointMismatchError with nothing
        changed. Optimizer state that does not fit (another Keras version's layout, an
        optimizer never stepped) is left out with a warning, as before.
        """
        optimizer = getattr(model, "optimizer", None)
        legacy = read_legacy_weights(model, path)
        values = legacy.optimizer
        fresh = None
        if values is not None and optimizer is not None:
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            shapes = [tuple(v.shape) for v in optimizer.variables]
            if [tuple(v.shape) for v in values] != shapes:
                # Not a reason to refuse the weights: the original saved Keras 2-era
                # layouts and unstepped optimizers too. Say so and start it fresh.
                fresh = (f"{path}: its optimizer state ({len(values)} variables) does not "
                         f"fit {type(optimizer).__name__} ({len(shapes)}); the optimizer "
                         "starts fresh")

        def apply() -> list[str]:
            for layer, variables, arrays in legacy.layers:
                for variable, array in zip(variables, arrays, strict=True):
                    variable.assign(array)
                if variables and hasattr(layer, "finalize_state"):  # as Keras' loader does
                    layer.finalize_state()
            if values is None:
                self.log.info(f"{path}: holds no optimizer state; the optimizer starts fresh")
            elif optimizer is None:
                pending = self.pending.of(model)
                pending.optimizer, pending.source, pending.legacy = values, str(path), True
                self.log.info(f"{path}: the model is not compiled yet; its optimizer state "
                              "is applied when training begins")
            elif fresh is not None:
                return [fresh]
            else:
                optimizer.set_weights(values)
                self.log.info(f"{path}: restored weights and optimizer state "
                              f"({len(values)} variables)")
            return []

        return apply

    def _apply_rng(self, model: Any, rng: RngFile) -> list[str]:
        """Set the seed generators and global RNGs; problems worth a warning."""
        count, restored, problems = rng_file.apply(model, rng)
        # fit() may draw from the global RNGs between restart and the first epoch.
        self.pending.of(model).rng = rng
        self.log.debug(f"restored {count} seed generator(s) and "
                       f"{', '.join(restored) or 'no global RNG'}")
        return problems

    def begin_training(self) -> None:
        """Apply what restart left pending: the optimizer state (validated), global RNGs."""
        if self.model is not None:
            self.pending.apply(self.model, self.log)

    def release_buffers(self) -> None:
        self.buffers.release()
