"""What to save: the engine's decisions as frozen ``SaveRecord``s.

The policies (``policy.py``) say whether an epoch is saved and whether it is a new best;
the :class:`Planner` holds what they need between calls (the best so far, the time of
the last save) and turns their answers into the record a ``Saver`` writes. It adopts a
record's best only once that record is committed, so a failed save never leaves a best
behind that no checkpoint holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .policy import BestTracker, Direction, best_among, should_save
from .record import SaveRecord
from .storage.integrity import DEFAULT_ALGORITHM


class Planner:
    """Save decisions for one run (see the module docstring)."""

    def __init__(self, settings: Any, direction: Direction, backend_name: str,
                 recorded_metrics: Callable[[], dict[int, float | None]],
                 say: Callable[[str, str], None]) -> None:
        """``recorded_metrics``: each complete checkpoint's own metric (epoch -> value);
        ``say(level, message)``: the engine's log."""
        self.settings = settings
        self.direction = direction
        self.backend_name = backend_name
        self._recorded_metrics = recorded_metrics
        self._say = say
        self.best = BestTracker(direction.sign, settings.best_metric_last)
        self.time_last: float | None = None

    def take_best(self, value: float | None, epoch: int | None) -> None:
        """The best so far, as a checkpoint records it (construction, restart)."""
        self.best = BestTracker(self.direction.sign, value, epoch)

    def is_new_best(self, metric: float | None, sign: str) -> bool:
        return bool(self.settings.save_best) and self.best.improved(metric, sign)

    def decide(self, epoch: int, sign: str, metric: float | None) -> SaveRecord | None:
        """The record of a save of the (1-based) ``epoch``, or None when the policies
        say no."""
        s = self.settings
        is_best = self.is_new_best(metric, sign)
        decision = should_save(epoch, epochs_total=s.epochs, skip_epochs=s.skip_epochs,
                               save_interval=s.save_interval, save_best=s.save_best,
                               is_new_best=is_best)
        self._say("debug", f"epoch {epoch}: {'saving' if decision.save else 'not saving'} "
                           f"({decision.reason})")
        if not decision.save:
            return None
        if is_best:
            best = self.best.after(epoch, metric, sign)
        elif epoch == self.best.epoch:
            # Re-doing the best epoch (a run that loops from epoch 0 again) with a metric
            # that is not better: the best checkpoint is replaced, so the best is now
            # the best of what will exist, possibly this one.
            recorded = self._recorded_metrics()
            recorded[epoch] = metric
            best = best_among(recorded, sign)
            is_best = bool(s.save_best) and best.epoch == epoch
            self._say("info", f"epoch {epoch}: re-done with {s.save_best_metric}={metric}, "
                              f"not better than its earlier {self.best.value}; best is now "
                      + (f"epoch {best.epoch} ({best.value})" if best.epoch is not None
                         else "none (no checkpoint records a finite metric)"))
        else:
            best = self.best
        return self.record(epoch, metric, is_best, best)

    def mid_epoch(self, epochs_done: int, batches: int, reason: str) -> SaveRecord:
        """The record of a mid-epoch save: ``batches`` into epoch ``epochs_done`` + 1."""
        return self.record(epochs_done, None, False, self.best, batch=batches, reason=reason)

    def record(self, epoch: int, metric: float | None, is_best: bool, best: BestTracker,
               batch: int = 0, reason: str = "") -> SaveRecord:
        s = self.settings
        return SaveRecord(
            epoch=epoch, metric_value=metric, is_best=is_best, best_metric_last=best.value,
            epoch_best=best.epoch, save_best_metric=s.save_best_metric,
            best_mode=self.direction.mode,
            checksum_algorithm=DEFAULT_ALGORITHM if s.checksum else None,
            metadata=s.metadata, backend=self.backend_name, time=time.time(),
            time_previous=self.time_last, batch=batch, reason=reason)

    def adopt(self, record: SaveRecord, committed: bool = True) -> None:
        """A save was decided (``save_check``) or committed: its best is the best so far."""
        self.best = BestTracker(self.best.sign, record.best_metric_last, record.epoch_best)
        if committed:
            self.time_last = record.time
