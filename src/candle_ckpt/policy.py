"""Pure checkpoint decisions: save or not, best or not, which checkpoints to keep.

Nothing here touches the disk or a clock; every function takes plain values and returns
a decision, so the rules can be tested exhaustively.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import CkptParamError
from .storage.layout import CkptKey

_Key = TypeVar("_Key", int, CkptKey)

# Names that grow when the model improves; matched as whole words of the metric name
# (split on "_"; a word also counts without its trailing digits), so "val_accuracy",
# "auc_2", "acc1", "f1_score" and "r2" all count.
_MAX_WORDS = {
    "acc", "accuracy", "auc", "precision", "recall", "f1", "fmeasure", "fbeta", "r2",
    "iou", "miou", "dice", "score", "map", "top", "topk", "ndcg", "psnr", "ssim",
    "correlation", "corr", "pearson", "spearman", "kappa", "mcc", "coverage",
}


@dataclass(frozen=True)
class Direction:
    """Which way the best metric improves: ``sign`` is "+" (max) or "-" (min)."""

    sign: str
    reason: str

    @property
    def mode(self) -> str:
        return "max" if self.sign == "+" else "min"


def best_direction(metric: str, mode: str) -> Direction:
    """Direction of ``metric`` under ``ckpt_save_best_mode`` ("auto", "min" or "max")."""
    if mode == "min":
        return Direction("-", "ckpt_save_best_mode='min'")
    if mode == "max":
        return Direction("+", "ckpt_save_best_mode='max'")
    if mode != "auto":
        raise CkptParamError(
            f"parameter 'ckpt_save_best_mode': value {mode!r} is not allowed; "
            "accepted: 'auto', 'min', 'max'"
        )
    words = [w for w in re.split(r"[^a-z0-9]+", metric.lower()) if w]
    if any(w in _MAX_WORDS or w.rstrip("0123456789") in _MAX_WORDS for w in words):
        return Direction("+", f"auto: {metric!r} looks like an accuracy-like metric (max)")
    return Direction("-", f"auto: {metric!r} treated as a loss-like metric (min)")


def is_improvement(value: float | None, best: float | None, sign: str) -> bool:
    """Is ``value`` better than ``best``? NaN and infinities are never best."""
    if sign not in ("+", "-"):
        raise CkptParamError(f"direction: value {sign!r} is not allowed; accepted: '+', '-'")
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value > best if sign == "+" else value < best


@dataclass(frozen=True)
class BestTracker:
    """The best metric so far and the epoch that reached it; ``after`` gives the next.

    Frozen: a save in flight holds the tracker it was decided with, and the engine
    adopts it only once that save is committed, so a failed save never leaves a best
    behind that no checkpoint holds.
    """

    sign: str
    value: float | None = None
    epoch: int | None = None

    def improved(self, value: float | None, sign: str | None = None) -> bool:
        """Would ``value`` be a new best (in direction ``sign``, default ours)?"""
        return is_improvement(value, self.value, sign or self.sign)

    def after(self, epoch: int, value: float | None, sign: str | None = None) -> BestTracker:
        """The tracker once ``epoch`` with ``value`` is saved: itself unless a new best."""
        if not self.improved(value, sign):
            return self
        return BestTracker(self.sign, value, epoch)


def best_among(recorded: dict[int, float | None], sign: str) -> BestTracker:
    """The best of the checkpoints' recorded metrics (epoch -> value), oldest first on ties.

    An empty tracker when none holds a finite metric.
    """
    best = BestTracker(sign)
    for epoch in sorted(recorded):
        best = best.after(epoch, recorded[epoch])
    return best


@dataclass(frozen=True)
class SaveDecision:
    save: bool
    reason: str


def should_save(
    epoch: int,
    *,
    epochs_total: int | None,
    skip_epochs: int,
    save_interval: int,
    save_best: bool,
    is_new_best: bool,
) -> SaveDecision:
    """Should the (1-based) ``epoch`` just completed be saved?

    Rules, in order: ``save_interval == 0`` saves nothing at all, not even a new best or
    the final epoch (the spec: "Set save_interval=0 to disable these checkpoints (save
    nothing)"; the original returns first thing too); epochs ``<= skip_epochs`` are
    never saved; a new best is saved when ``save_best``; every multiple of
    ``save_interval`` and the final epoch are saved.
    """
    if save_interval < 0:
        raise CkptParamError(
            f"parameter 'ckpt_save_interval': value {save_interval} must be an integer >= 0"
        )
    if save_interval == 0:
        return SaveDecision(False, "ckpt_save_interval=0: saving is disabled")
    if epoch <= skip_epochs:
        return SaveDecision(False, f"epoch {epoch} <= ckpt_skip_epochs={skip_epochs}")
    if save_best and is_new_best:
        return SaveDecision(True, "new best")
    if epoch % save_interval == 0:
        return SaveDecision(True, f"interval {save_interval}")
    if epochs_total is not None and epoch == epochs_total:
        return SaveDecision(True, "final epoch")
    return SaveDecision(False, f"not on interval {save_interval}")


def epochs_to_keep(
    mode: str,
    keep_limit: int,
    run_epochs: Iterable[int],
    epoch_now: int,
    epoch_best: int | None,
    protected: Iterable[int] = (),
) -> set[int]:
    """Which of this run's checkpoints to keep after ``epoch_now`` was committed.

    ``run_epochs`` are the epochs this run wrote (including ``epoch_now``). The newest
    (``epoch_now``), the best and ``protected`` ones (e.g. the target of ``last``) are
    always kept.

    - "all": keep everything.
    - "linear" (the original rule): walk newest to oldest; keep the newest, the best,
      and any while fewer than ``keep_limit`` have been kept (the best counts).
    - "exponential": keep the newest; of older ones keep the newest in each age band
      [2^k, 2^(k+1)) epochs back from ``epoch_now``; then drop the oldest while more
      than ``keep_limit`` remain.
    """
    if keep_limit <= 0:
        raise CkptParamError(f"parameter 'ckpt_keep_limit': value {keep_limit} must be > 0")
    epochs = sorted(set(run_epochs), reverse=True)
    always = {epoch_now} | set(protected) | ({epoch_best} if epoch_best is not None else set())
    always &= set(epochs) | {epoch_now}
    if mode == "all":
        return set(epochs) | always
    if mode == "linear":
        kept: set[int] = set()
        for e in epochs:
            if e in always or len(kept) < keep_limit:
                kept.add(e)
        return kept | always
    if mode == "exponential":
        newest_in_band: dict[int, int] = {}
        for e in epochs:
            age = epoch_now - e
            if age <= 0:
                continue  # epoch_now itself, or newer than now: kept via `always` / below
            band = age.bit_length() - 1  # age in [2^band, 2^(band+1))
            if band not in newest_in_band or e > newest_in_band[band]:
                newest_in_band[band] = e
        kept = set(newest_in_band.values()) | {e for e in epochs if e >= epoch_now} | always
        for e in sorted(kept):  # oldest first
            if len(kept) <= keep_limit:
                break
            if e not in always:
                kept.discard(e)
        return kept
    raise CkptParamError(
        f"parameter 'ckpt_keep_mode': value {mode!r} is not allowed; "
        "accepted: 'linear', 'exponential', 'all'"
    )


def epochs_to_delete(
    mode: str,
    keep_limit: int,
    run_epochs: Sequence[int],
    epoch_now: int,
    epoch_best: int | None,
    protected: Iterable[int] = (),
) -> list[int]:
    """The complement of :func:`epochs_to_keep` within ``run_epochs``, oldest first."""
    keep = epochs_to_keep(mode, keep_limit, run_epochs, epoch_now, epoch_best, protected)
    return sorted(set(run_epochs) - keep)


def epochs_over_budget(
    budget: int,
    run_epochs: Iterable[int],
    protected: Iterable[int],
    footprint: Callable[[set[int]], int],
) -> tuple[list[int], int]:
    """Which of this run's checkpoints to delete so that they fit in ``budget`` bytes.

    Oldest first, the unprotected ones of ``run_epochs`` are given up until
    ``footprint(remaining)`` (the bytes the remaining checkpoints occupy together) is at
    most ``budget``; ``protected`` ones are never given up. Returns the epochs to delete,
    oldest first, and what the remaining ones occupy (above ``budget`` when even the
    protected ones alone do not fit).
    """
    if budget < 1:
        raise CkptParamError(
            f"parameter 'ckpt_keep_bytes': value {budget} must be at least one byte")
    remaining = set(run_epochs)
    keep = set(protected)
    doomed: list[int] = []
    used = footprint(remaining)
    for epoch in sorted(remaining - keep):
        if used <= budget:
            break
        remaining.discard(epoch)
        doomed.append(epoch)
        used = footprint(remaining)
    return doomed, used


def restart_order(last: _Key, complete: Iterable[_Key]) -> list[_Key]:
    """The checkpoints restart tries, in order, when ``last`` points at ``last``.

    ``last`` first, then every complete checkpoint older than it, newest first: restart
    loads the first that validates. Checkpoints after ``last`` (left by a rollback) are
    never tried; training re-does them. Keys are epochs (ints) or :class:`CkptKey` objects.
    """
    return [last] + sorted((k for k in set(complete) if k < last), reverse=True)


def protected_epochs(
    *,
    last: int | None,
    best: int | None,
    restart_from: int | None = None,
    newest_valid: int | None = None,
) -> set[int]:
    """The checkpoints that no deletion (keep policy, ``candle-ckpt prune``) may remove.

    Args:
        last: the epoch ``last`` points to (whether or not that checkpoint is valid).
        best: the epoch ``best`` points to.
        restart_from: the checkpoint a restart loads: the one this run resumed from
            (engine), or the one a restart would load now (CLI: ``last`` when it is
            valid, else the first valid one of :func:`restart_order`).
        newest_valid: the newest checkpoint that passes verification, the one to roll
            back to when everything newer turns out to be damaged.

    Returns:
        The given epochs (None means "there is none").
    """
    return {e for e in (last, best, restart_from, newest_valid) if e is not None}
