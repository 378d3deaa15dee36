"""The public Keras classes: ``CandleCkptKeras``, ``CandleCheckpointCallback``, the
module-level ``restart()`` and ``restart_json()``, and ``MultiGPUCheckpoint``."""

from __future__ import annotations

from typing import Any

import keras

from ...engine import CandleCkpt, read_info_json
from ...errors import CkptParamError, MetricNotFoundError
from .backend import KerasBackend, KerasSnapshot
from .data import DATA_ORDER_FILE, EndOfDataWarning, PhantomStep, ResumableData, make_dataset
from .deferred import PENDING


class CandleCkptKeras(keras.callbacks.Callback, CandleCkpt):
    """Keras callback that checkpoints per the CANDLE hyperparameters.

    Use::

        ckpt = CandleCkptKeras(gParameters)
        ckpt.set_model(model)
        J = ckpt.restart(model)
        initial_epoch = J["epoch"] if J else 0
        model.fit(..., initial_epoch=initial_epoch, callbacks=[ckpt])

    The model must be built before ``restart``. If it is compiled only afterwards (as
    NT3 does), the optimizer state is applied when training begins (``on_train_begin``),
    after checking the optimizer's type and variables: one that does not fit raises
    ``CheckpointMismatchError`` there, and the state stays pending.

    Stop-signal handlers (``ckpt_signals``) are installed when the callback is attached
    to the model (``set_model``, which ``fit()`` calls too), as for torch, and removed at
    ``on_train_end()`` or ``close()``.

    Training data made by :meth:`dataset` is resumed exactly after a mid-epoch
    checkpoint: ``fit`` continues the interrupted epoch at the next batch.
    """

    backend_name = "keras"
    backend: KerasBackend

    def __init__(self, gParameters: Any = None, logger: Any = "DEFAULT",
                 verbose: bool = True) -> None:
        keras.callbacks.Callback.__init__(self)  # Keras 3: `model` is a read-only property
        CandleCkpt.__init__(self, gParameters, logger, verbose)
        self._epoch_in_progress = 0
        self._batches_skipped = 0  # of the epoch in progress (a resumed one), by the data
        self._quiet_end = EndOfDataWarning()
        self._phantom = PhantomStep()

    def _new_backend(self) -> KerasBackend:
        # The spec's module-level restart() and the callback share what it left pending.
        return KerasBackend(self._log, bool(self.save_weights_only), PENDING)

    def close(self) -> None:
        """Wait for a background save, release the directory and the capture buffers."""
        try:
            CandleCkpt.close(self)
        finally:
            backend = getattr(self, "backend", None)
            if isinstance(backend, KerasBackend):
                backend.release_buffers()

    # --------------------------------------------------------------- model plumbing
    def set_model(self, model: Any) -> None:
        """Name the model to checkpoint; ``fit()`` calls this too, as training starts."""
        self._attach_model(model)
        self._preempt.start()  # stop-signal handlers, until on_train_end() or close()

    def _attach_model(self, model: Any) -> None:
        self._model = model
        self.backend.model = model

    def _is_model(self, obj: Any) -> bool:
        return isinstance(obj, keras.Model)

    def _has_model(self) -> bool:
        return self.backend.model is not None

    def capture_state(self) -> KerasSnapshot:
        """A host copy of everything a checkpoint holds (what an async save writes)."""
        return self.backend.capture(live=False)

    def restart(self, model: Any = None, verbose: Any = True) -> dict[str, Any] | None:
        """Restart from ``last`` per ckpt_restart_mode; the info dict, or None.

        ``restart()``, ``restart(model)``, ``restart(gParameters, model)`` and
        ``restart(gParameters)`` are accepted: the model passed is restored, else the one
        given to ``set_model`` (hyperparameters passed are not needed here and ignored).

        Raises:
            CkptParamError: no model is known, or it is not built (its weights could not
                be loaded, and silently starting from scratch would overwrite the run).
            CheckpointMismatchError: the checkpoint does not fit the model (nothing loaded).
        """
        model, verbose = self._restart_args(model, verbose)
        target = model if model is not None else self.backend.model
        if self.restart_mode != "off":
            if target is None:
                raise CkptParamError(
                    f"{type(self).__name__}.restart: no model; pass it (restart(model) or "
                    "restart(gParameters, model)) or call set_model(model) first, so its "
                    "checkpoint can be loaded"
                )
            if not target.built:
                raise CkptParamError(
                    "restart: the model is not built; give it an Input (or call "
                    "model.build(input_shape)) before restart so its weights can be loaded"
                )
        return CandleCkpt.restart(self, model, verbose)

    # --------------------------------------------------------------- training data
    def dataset(self, x: Any, y: Any = None, batch_size: int | None = None,
                shuffle: bool = True, seed: int | None = None,
                sample_weight: Any = None) -> ResumableData:
        """Training data for ``fit`` that a restart continues at the next batch.

        Pass the result to ``fit`` as ``x`` (without ``y``, ``batch_size``, ``shuffle`` or
        ``sample_weight``), with this callback in ``callbacks``. Each epoch's order is a
        function of ``seed`` and the epoch alone; after a restart from a mid-epoch
        checkpoint, the interrupted epoch yields only the batches it had not trained,
        without reading the others. Call it before or after ``restart``. One per callback:
        the data made last is the one the callback drives and checkpoints (validation
        data needs none of this).

        Args:
            x: NumPy arrays (or a dict, list or tuple of them), a finite
                ``keras.utils.PyDataset``, or a finite ``tf.data.Dataset`` of batches.
            y, sample_weight: arrays beside array ``x`` (in the batches otherwise).
            batch_size: for arrays (default 32).
            shuffle: a fresh order every epoch: of the samples (arrays) or of the batches
                (a PyDataset); a ``tf.data.Dataset`` is read in its own order (False).
            seed: the order's seed; None draws one from the OS, and a restart takes the
                checkpoint's, so the interrupted run's order goes on.

        Raises:
            CkptParamError: an argument that is not accepted (named, with what is).
            CheckpointMismatchError: a restart already loaded a mid-epoch checkpoint whose
                data (size, batches, batch size, shuffle, seed) differs from this.
        """
        data = make_dataset(x, y, batch_size, shuffle, seed, sample_weight)
        order = self.backend.pending.data_order(self.backend.model)
        if order is not None:
            for note in data.check_resume(order, DATA_ORDER_FILE):
                self._log.warning(note)
            data.resume_from(order)
        self.backend.data = data
        return data

    # --------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs: Any = None) -> None:
        data, model = self.backend.data, self.backend.model
        order = self.backend.pending.data_order(model)
        if order is not None and data is not None and data.resumed_from is not order:
            for note in data.check_resume(order, DATA_ORDER_FILE):  # before anything changes
                self._log.warning(note)
        self.backend.begin_training()
        self._epoch_in_progress = 0
        self._batches_skipped = 0
        if order is None or order.batch == 0:
            return
        if data is not None:
            data.resume_from(order)
            self._log.info(f"resuming epoch {order.epoch + 1} at batch {order.batch + 1} of "
                           f"{order.shape.batches} (its first {order.batch} were trained "
                           "before the checkpoint)")
        else:
            self._log.info(f"the checkpoint was taken {order.batch} batches into epoch "
                           f"{order.epoch + 1}; fit() reads data not made by "
                           "CandleCkptKeras.dataset(), so that epoch is trained from its "
                           "first batch")

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch_in_progress = int(epoch)
        data = self.backend.data
        self._batches_skipped = data.begin_epoch(epoch) if data is not None else 0
        if self._batches_skipped:
            # Keras counts this epoch's steps from 0 and ends it when the data runs out.
            self._quiet_end.on()

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        data = self.backend.data
        if self._batches_skipped and data is not None \
                and batch + self._batches_skipped == data.num_batches:
            # The resumed epoch's batches are done; Keras tries one step more.
            self._phantom.before(self.model)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """A stop signal or a time-based save is due: save mid-epoch (and stop)."""
        if self.ckpt_batch(self._epoch_in_progress, batch + self._batches_skipped):
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """Checkpoint the (0-based) epoch just completed, per the policies."""
        self._quiet_end.off()
        resumed, self._batches_skipped = self._batches_skipped, 0
        if resumed:
            undone = self._phantom.undo()
            if undone:
                self._log.debug(f"epoch {epoch + 1}: put back {undone} counter/RNG "
                                "variable(s) advanced by Keras' step after the last batch")
            if self.save_best_metric not in (logs or {}):
                # Every batch of it was trained before the checkpoint: its metrics went
                # with the interrupted process.
                self._log.info(f"epoch {epoch + 1}: resumed after its last batch; its "
                               f"{self.save_best_metric} is not known")
                self.ckpt_epoch(epoch, self.direction.sign, None)
                return
        self.ckpt_epoch(epoch, self.direction.sign, self._metric_value(logs))

    def on_train_end(self, logs: Any = None) -> None:
        self._quiet_end.off()
        if self.backend.data is not None:
            self.backend.data.end_training()
        CandleCkpt.on_train_end(self, logs)

    def _metric_value(self, logs: Any) -> Any:
        logs = logs or {}
        metric = self.save_best_metric
        if metric in logs:
            return logs[metric]
        if self.save_best:
            present = ", ".join(repr(k) for k in sorted(logs)) or "none"
            raise MetricNotFoundError(
                f"ckpt_save_best_metric={metric!r} is not in this epoch's logs; metrics "
                f"present: {present}. Set ckpt_save_best_metric to one of them (val_* "
                "metrics need validation data), or ckpt_save_best=False"
            )
        return None


class CandleCheckpointCallback(CandleCkptKeras):
    """The older ``ckpt_keras_utils`` callback: same engine, older method signatures.

    ``save_check(logs, epoch)`` and ``save_check_best(logs, epoch)`` take the epoch's
    logs and the 1-based epoch, as the original did.
    """

    def save_check(self, logs: Any, epoch: Any) -> bool:  # type: ignore[override]
        """Should the (1-based) epoch be saved, given its logs? Records a new best."""
        return CandleCkpt.save_check(self, int(epoch), self.direction.sign,
                                     self._metric_value(logs))

    def save_check_best(self, logs: Any, epoch: Any) -> bool:  # type: ignore[override]
        """Would the epoch's logs hold a new best (does not record it)?"""
        return CandleCkpt.save_check_best(self, int(epoch), self.direction.sign,
                                          self._metric_value(logs))


# ------------------------------------------------------------------------ module level
def restart(gParameters: Any, model: Any = None, verbose: bool = True) -> dict[str, Any] | None:
    """Restart ``model`` from the last checkpoint per gParameters (the older API).

    Raises:
        CkptParamError: ``model`` is not a Keras model, or it is not built (with
            ckpt_restart_mode "off", a missing or unbuilt model is not needed).

    Returns:
        The checkpoint's ckpt-info.json dict (``J["epoch"]`` is the ``initial_epoch``),
        or None when there was nothing to restart from.
    """
    ckpt = _RestartOnly(gParameters, verbose=verbose)
    try:
        return ckpt.restart(model, verbose)
    finally:
        ckpt.close()


class _RestartOnly(CandleCkptKeras):
    """The engine of a module-level restart(): it does not report a run of its own (the
    callback built afterwards does, so the console says "checkpointing into" once)."""

    _quiet_start = True


def restart_json(gParameters: Any, logger: Any, directory: Any) -> dict[str, Any]:
    """Read a checkpoint directory's ckpt-info.json."""
    info = read_info_json(directory)
    if hasattr(logger, "debug"):
        logger.debug(f"read {directory}: epoch {info.get('epoch')!r}")
    return info


class MultiGPUCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that saves the template model of a multi-GPU wrapper.

    When the model's second-to-last layer is itself a Model (the old
    ``multi_gpu_model`` wrapping), that inner model is the one saved.
    """

    def __init__(self, filepath: Any, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto", save_freq: Any = "epoch", options: Any = None,
                 **kwargs: Any) -> None:
        if options is not None:
            raise CkptParamError(
                f"MultiGPUCheckpoint: options={options!r} is not supported by Keras 3's "
                "ModelCheckpoint; pass options=None"
            )
        super().__init__(filepath, monitor=monitor, verbose=verbose,
                         save_best_only=save_best_only, save_weights_only=save_weights_only,
                         mode=mode, save_freq=save_freq, **kwargs)

    def set_model(self, model: Any) -> None:
        layers = getattr(model, "layers", [])
        if len(layers) >= 2 and isinstance(layers[-2], keras.Model):
            model = layers[-2]
        super().set_model(model)
