"""``CandleCkptPyTorch``: the CANDLE checkpoint API for PyTorch training loops.

Usage, as CANDLE benchmarks write it::

    ckpt = candle.CandleCkptPyTorch(params)
    ckpt.set_model({"model": model, "optimizer": optimizer, "scheduler": scheduler})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    for epoch in range(initial_epoch, params["epochs"]):
        ...
        ckpt.ckpt_epoch(epoch, train_loss)

What a checkpoint holds and how it is checked is the backend's (``backend.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...coordination import Coordinator, LocalCoordinator, TorchCoordinator
from ...engine import CandleCkpt
from ...errors import CkptParamError
from .backend import TorchBackend, TorchSnapshot
from .entries import is_set_model_dict
from .order import EpochBatches


class CandleCkptPyTorch(CandleCkpt):
    """Checkpoint/restart for a PyTorch model, its optimizer and any stateful helpers.

    Args:
        gParams: dict or argparse.Namespace with the ``ckpt_*`` keys and ``epochs``.
        logger: "DEFAULT" (console), None or a ``logging.Logger``.
        verbose: console verbosity of the default logger.
    """

    backend_name = "torch"
    backend: TorchBackend

    def __init__(self, gParams: Any = None, logger: Any = "DEFAULT", verbose: bool = True):
        super().__init__(gParams, logger, verbose)
        # After the first on_epoch_begin(), ckpt_epoch() only records (epoch, metric)
        # here and the checkpoint is taken when the next epoch begins (or at on_train_end).
        self._save_at_epoch_begin = False
        self._pending_epoch: tuple[int, float | None] | None = None

    def _new_backend(self) -> TorchBackend:
        return TorchBackend(self._log, self._coord)

    def _new_coordinator(self) -> Coordinator:
        """Under an initialized torch.distributed process group: one engine per rank."""
        return TorchCoordinator.from_torch() or LocalCoordinator()

    @property
    def model(self) -> dict[str, Any] | None:
        """The dict given to ``set_model``."""
        return self.backend.model

    def set_model(self, model: Mapping[str, Any]) -> None:
        """Name what to checkpoint: ``{"model": m, "optimizer": o, ...}``.

        ``model`` (an ``nn.Module``, possibly wrapped in DataParallel/DDP) and
        ``optimizer`` are required. Every other entry that has ``state_dict()`` and
        ``load_state_dict()`` (an LR scheduler, a GradScaler, an EMA model) is saved and
        restored under its key, as are ``torch.Generator``, ``random.Random`` and
        ``numpy.random.Generator`` entries. Other entries are ignored (and logged).

        Raises:
            CkptParamError: ``model`` or ``optimizer`` is missing or of the wrong kind,
                or some state could not be read back with ``weights_only=True``.
        """
        self.backend.set_model(model)
        self._preempt.start()  # stop-signal handlers, until on_train_end() or close()
        if self.settings.async_save:
            self.backend.prefill_buffers()

    def ckpt_batch(self, epoch: int, batch: int) -> bool:
        """Call after each optimizer step (0-based epoch and batch, like ckpt_epoch).

        Returns True when a stop signal (``ckpt_signals``) or the wall-clock limit made it
        commit a mid-epoch checkpoint: end the training loop then (and call
        ``on_train_end()``). On restart, ``J["batch"]`` batches of epoch ``J["epoch"]``
        are done: iterate :meth:`batches` and they are skipped, the rest in the
        interrupted run's order.
        """
        self.backend.require_model("ckpt_batch")
        return super().ckpt_batch(epoch, batch)

    def batches(self, loader: Any, epoch: int) -> EpochBatches:
        """The batches of ``loader`` for the 0-based ``epoch``: iterate this, not the loader.

        Usually the loader's own iterator, with the epoch's order recorded (the RNG
        states it is drawn from; a ``StatefulDataLoader``'s ``state_dict()``), so that a
        mid-epoch checkpoint can resume it. In the epoch a restart from a mid-epoch
        checkpoint resumes, it continues after the batches already trained, in the order
        the interrupted run had, without fetching the skipped samples (a map-style
        dataset: they are skipped at the sampler), and with every RNG as ``restart``
        left it. ``enumerate(b, start=b.start)`` numbers the batches as an
        uninterrupted epoch does (``start``: the batches skipped)::

            for epoch in range(initial_epoch, params["epochs"]):
                epoch_batches = ckpt.batches(train_loader, epoch)
                for i, (x, y) in enumerate(epoch_batches, start=epoch_batches.start):
                    ...  # the step
                    if ckpt.ckpt_batch(epoch, i):
                        break

        Raises:
            CkptParamTypeError: ``loader`` is not a ``torch.utils.data.DataLoader``.
            CkptParamError: ``epoch`` is not a non-negative integer.
            CheckpointMismatchError: resuming, the loader is not of the kind, the
                samplers or the length the interrupted run's was.
        """
        return self.backend.order.batches(loader, epoch)

    def ckpt_epoch(self, epoch: int, metric_value: Any = None) -> bool:  # type: ignore[override]
        """Checkpoint the 0-based ``epoch`` just completed, if the policies say so.

        ``metric_value`` (a number or a 0-d tensor) is compared in the direction of
        ``ckpt_save_best_mode`` (with "auto", loss-like metric names are minimized).
        Returns True when a checkpoint was written.

        Precondition for an exact resume: the checkpoint holds every state (the global
        torch/CUDA/numpy/Python RNGs, the scheduler, ...) as it is *now*, and a resumed run
        starts epoch ``epoch + 1`` from exactly that. Anything between this call and the
        next epoch that draws from a global RNG or steps a saved object (a validation
        ``DataLoader(shuffle=True)``, which draws a seed from torch's RNG; a
        ``scheduler.step()``) is missing from the checkpoint, and the resumed run drifts
        from the uninterrupted one. Either call ``ckpt_epoch`` as the epoch's last step,
        or call :meth:`on_epoch_begin` first thing in every epoch: then this call only
        records ``epoch`` and ``metric_value`` (and returns False), and the checkpoint is
        taken when the next epoch begins (the last one by :meth:`on_train_end`).
        """
        self.backend.require_model("ckpt_epoch")
        metric = _metric_float(metric_value)
        if self._save_at_epoch_begin:
            self._pending_epoch = (epoch, metric)
            return False
        return self._save_epoch(epoch, metric)

    def on_epoch_begin(self, epoch: int) -> bool:
        """Call first thing in every epoch (0-based) to make ``ckpt_epoch`` exact anywhere.

        It takes the checkpoint the previous epoch's ``ckpt_epoch`` asked for, now: with
        the RNG states, the scheduler and every other entry as this epoch starts, which
        is what a resumed run must start from, whatever ran after ``ckpt_epoch``
        (validation, ``scheduler.step()``). Returns True when that checkpoint was
        written. Once called, ``ckpt_epoch`` defers to it for the rest of the run, and
        :meth:`on_train_end` takes the last epoch's checkpoint; a process that dies
        between ``ckpt_epoch`` and the next epoch loses that epoch's checkpoint (the
        previous one is intact).
        """
        self.backend.require_model("on_epoch_begin")
        self._save_at_epoch_begin = True
        return self._save_pending()

    def on_train_end(self, logs: Any = None) -> None:
        """Take the last epoch's checkpoint if :meth:`on_epoch_begin` deferred it; finish."""
        try:
            self._save_pending()
        finally:
            super().on_train_end(logs)

    def _save_pending(self) -> bool:
        pending, self._pending_epoch = getattr(self, "_pending_epoch", None), None
        return pending is not None and self._save_epoch(*pending)

    def _save_epoch(self, epoch: int, metric: float | None) -> bool:
        return super().ckpt_epoch(epoch, self.direction.sign, metric)

    def restart(self, model: Any = None, verbose: Any = True) -> dict[str, Any] | None:
        """Restore the newest usable checkpoint into the objects given to ``set_model``.

        ``model`` may be the ``nn.Module`` given to ``set_model`` (or its
        DataParallel/DDP wrapper, or the module it wraps) or the ``set_model`` dict.
        ``restart()``, ``restart(gParameters, model)`` and ``restart(gParameters)`` are
        accepted too (hyperparameters passed are not needed here and ignored).
        Returns the checkpoint's info (``J["epoch"]`` is the epoch to resume from) or None.

        Raises:
            CkptParamError: called before ``set_model``, or with another model.
            CheckpointMismatchError: the checkpoint does not fit the model or optimizer.
        """
        model, verbose = self._restart_args(model, verbose)
        if model is None:
            self.backend.require_model("restart")
        J = super().restart(model, verbose)
        if J is not None and self.settings.async_save:
            self.backend.prefill_buffers()  # the restored optimizer state has its size now
        return J

    def _attach_model(self, model: Any) -> None:
        self.backend.attach(model)

    def _is_model(self, obj: Any) -> bool:
        return isinstance(obj, nn.Module) or is_set_model_dict(obj)

    def _has_model(self) -> bool:
        return self.backend.model is not None

    def capture_state(self) -> TorchSnapshot:
        """A host copy of everything a checkpoint holds (what an async save writes)."""
        return self.backend.capture(live=False)

    def close(self) -> None:
        """Wait for a background save, release the directory and the capture buffers."""
        pending, self._pending_epoch = getattr(self, "_pending_epoch", None), None
        if pending is not None:
            self._log.warning(f"epoch {pending[0] + 1}: its checkpoint was deferred to the "
                              "next on_epoch_begin() and is not written; call "
                              "on_train_end() to end a run")
        try:
            super().close()
        finally:
            backend = getattr(self, "backend", None)
            if isinstance(backend, TorchBackend):
                backend.release_buffers()


def _metric_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CkptParamError(
                f"metric_value: a tensor of shape {tuple(value.shape)} is not a number; "
                "pass the epoch's metric (a float or a one-element tensor)"
            )
        return float(value.detach().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CkptParamError(
            f"metric_value: value {value!r} is not a number; pass the epoch's metric"
        ) from None
