"""Pure policies: which epoch to save, which way the best metric improves, what to keep."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candle_ckpt import CkptParamError, policy
from candle_ckpt.policy import (
    BestTracker,
    best_among,
    best_direction,
    epochs_to_delete,
    epochs_to_keep,
    is_improvement,
    protected_epochs,
    restart_order,
    should_save,
)


def save(epoch, *, total=10, skip=0, interval=1, best=True, new_best=False):
    return should_save(epoch, epochs_total=total, skip_epochs=skip, save_interval=interval,
                       save_best=best, is_new_best=new_best).save


# ------------------------------------------------------------------ should_save

def test_interval_saves_every_multiple_and_the_final_epoch():
    saved = [e for e in range(1, 11) if save(e, total=10, interval=3)]
    assert saved == [3, 6, 9, 10]


def test_interval_one_saves_every_epoch():
    assert all(save(e, total=5, interval=1) for e in range(1, 6))


def test_skip_epochs_are_never_saved_even_when_best_or_final():
    assert not save(2, skip=2, new_best=True)
    assert not save(3, total=3, skip=3)
    assert save(3, skip=2)


def test_new_best_is_saved_off_interval_only_when_save_best():
    assert save(5, interval=4, new_best=True, best=True)
    assert not save(5, interval=4, new_best=True, best=False)
    assert not save(5, interval=4, new_best=False, best=True)


def test_interval_zero_saves_nothing_not_even_a_new_best_or_the_final_epoch():
    # The spec: "Set save_interval=0 to disable these checkpoints (save nothing)".
    assert not any(save(e, total=4, interval=0) for e in range(1, 5))
    assert not any(save(e, total=4, interval=0, new_best=True) for e in range(1, 5))
    decision = should_save(4, epochs_total=4, skip_epochs=0, save_interval=0, save_best=True,
                           is_new_best=True)
    assert not decision.save and "ckpt_save_interval=0" in decision.reason


def test_negative_interval_is_refused_naming_the_parameter():
    with pytest.raises(CkptParamError, match="'ckpt_save_interval'.*-1.*>= 0"):
        save(3, interval=-1)


def test_unknown_total_has_no_final_epoch_save():
    assert not save(7, total=None, interval=3)


@given(epoch=st.integers(1, 60), total=st.one_of(st.none(), st.integers(1, 60)),
       skip=st.integers(0, 10), interval=st.integers(0, 7), best=st.booleans(),
       new_best=st.booleans())
def test_should_save_matches_the_stated_rules(epoch, total, skip, interval, best, new_best):
    expected = interval > 0 and epoch > skip and (
        (best and new_best) or epoch % interval == 0 or epoch == total
    )
    assert save(epoch, total=total, skip=skip, interval=interval, best=best,
                new_best=new_best) == expected


# ------------------------------------------------------------------ best direction

@pytest.mark.parametrize("metric", [
    "val_loss", "loss", "mse", "val_mae", "mean_absolute_error", "val_error", "perplexity",
])
def test_auto_direction_minimises_loss_like_metrics(metric):
    d = best_direction(metric, "auto")
    assert (d.sign, d.mode) == ("-", "min")
    assert metric in d.reason


@pytest.mark.parametrize("metric", [
    "accuracy", "val_accuracy", "val_acc", "auc", "val_auc_2", "precision", "val_recall",
    "f1", "val_f1", "f1_score", "r2", "top_k_categorical_accuracy",
])
def test_auto_direction_maximises_accuracy_like_metrics(metric):
    d = best_direction(metric, "auto")
    assert (d.sign, d.mode) == ("+", "max")
    assert metric in d.reason


def test_explicit_mode_overrides_the_metric_name():
    assert best_direction("val_accuracy", "min").sign == "-"
    assert best_direction("val_loss", "max").sign == "+"


def test_unknown_mode_is_a_param_error_listing_the_choices():
    with pytest.raises(CkptParamError, match="'auto', 'min', 'max'"):
        best_direction("val_loss", "down")


def test_improvement_follows_the_direction():
    assert is_improvement(0.4, 0.5, "-") and not is_improvement(0.6, 0.5, "-")
    assert is_improvement(0.6, 0.5, "+") and not is_improvement(0.4, 0.5, "+")
    assert not is_improvement(0.5, 0.5, "-") and not is_improvement(0.5, 0.5, "+")
    assert is_improvement(3.0, None, "-") and is_improvement(-3.0, None, "+")


@pytest.mark.parametrize("sign", ["+", "-"])
@pytest.mark.parametrize("best", [None, 0.5, math.inf, -math.inf])
def test_nan_is_never_best(sign, best):
    assert not is_improvement(math.nan, best, sign)
    assert not is_improvement(None, best, sign)


@pytest.mark.parametrize("sign", ["+", "-"])
def test_a_finite_value_beats_a_nan_or_infinite_best(sign):
    assert is_improvement(1.0, math.nan, sign)
    assert is_improvement(1.0, math.inf, sign)


def test_bad_direction_sign_is_refused():
    with pytest.raises(CkptParamError, match="'\\+', '-'"):
        is_improvement(1.0, 2.0, "up")


# ------------------------------------------------------------------ keep policies

def linear_oracle(limit, epochs, now, best, protected):
    """The original CANDLE clean(): walk newest to oldest, counting every kept one."""
    kept = set()
    count = 0
    for e in sorted(set(epochs), reverse=True):
        if e == now or e == best or e in protected or count < limit:
            kept.add(e)
            count += 1
    return kept


def exponential_oracle(limit, epochs, now, best, protected):
    """The exponential rule, spelled out independently of the implementation."""
    always = ({now, best} | set(protected)) & set(epochs)
    kept = {now} & set(epochs)
    k = 0
    while 2 ** k <= now:
        band = [e for e in epochs if 2 ** k <= now - e < 2 ** (k + 1)]
        if band:
            kept.add(max(band))
        k += 1
    kept |= always
    droppable = sorted(kept - always)
    while len(kept) > limit and droppable:
        kept.discard(droppable.pop(0))
    return kept


@st.composite
def keep_cases(draw):
    now = draw(st.integers(1, 70))
    older = draw(st.sets(st.integers(1, now), max_size=40))
    epochs = sorted(older | {now})
    limit = draw(st.integers(1, 12))
    best = draw(st.one_of(st.none(), st.sampled_from(epochs), st.integers(1, 80)))
    protected = draw(st.sets(st.sampled_from(epochs), max_size=3))
    return limit, epochs, now, best, protected


@settings(max_examples=400)
@given(keep_cases(), st.sampled_from(["linear", "exponential", "all"]))
def test_newest_best_and_protected_are_always_kept(case, mode):
    limit, epochs, now, best, protected = case
    kept = epochs_to_keep(mode, limit, epochs, now, best, protected)
    assert now in kept
    assert set(protected) <= kept
    if best in epochs:
        assert best in kept
    assert kept <= set(epochs)


@settings(max_examples=400)
@given(keep_cases())
def test_linear_matches_the_original_rule(case):
    limit, epochs, now, best, protected = case
    assert epochs_to_keep("linear", limit, epochs, now, best, protected) == linear_oracle(
        limit, epochs, now, best, protected)


@settings(max_examples=400)
@given(keep_cases())
def test_linear_keeps_at_least_limit_and_at_most_limit_plus_the_untouchable(case):
    limit, epochs, now, best, protected = case
    kept = epochs_to_keep("linear", limit, epochs, now, best, protected)
    untouchable = ({now, best} | set(protected)) & set(epochs)
    assert min(limit, len(epochs)) <= len(kept) <= limit + len(untouchable)
    newest = sorted(epochs, reverse=True)[:limit]
    assert set(newest) <= kept


@settings(max_examples=400)
@given(keep_cases())
def test_exponential_keeps_the_newest_of_each_age_band_then_drops_the_oldest(case):
    limit, epochs, now, best, protected = case
    kept = epochs_to_keep("exponential", limit, epochs, now, best, protected)
    assert kept == exponential_oracle(limit, epochs, now, best, protected)
    untouchable = ({now, best} | set(protected)) & set(epochs)
    assert len(kept) <= max(limit, len(untouchable))


@settings(max_examples=200)
@given(keep_cases())
def test_exponential_without_limit_keeps_one_per_band(case):
    _, epochs, now, _, _ = case
    kept = epochs_to_keep("exponential", 10**6, epochs, now, None)
    for e in kept - {now}:
        band = (now - e).bit_length() - 1
        newer_in_band = [x for x in epochs if x > e and (now - x).bit_length() - 1 == band]
        assert not newer_in_band
    bands = {(now - e).bit_length() - 1 for e in epochs if e < now}
    assert len(kept) == 1 + len(bands)


def test_exponential_example_after_sixteen_epochs():
    # ages 1, 2-3, 4-7, 8-15 -> epochs 15, 14, 12, 8 (the newest in each band), plus 16
    kept = epochs_to_keep("exponential", 100, range(1, 17), 16, None)
    assert kept == {16, 15, 14, 12, 8}
    assert epochs_to_keep("exponential", 3, range(1, 17), 16, None) == {16, 15, 14}
    assert epochs_to_keep("exponential", 3, range(1, 17), 16, 2) == {16, 15, 2}


@settings(max_examples=200)
@given(keep_cases())
def test_all_keeps_everything(case):
    limit, epochs, now, best, protected = case
    assert epochs_to_keep("all", limit, epochs, now, best, protected) == set(epochs)
    assert epochs_to_delete("all", limit, epochs, now, best, protected) == []


@settings(max_examples=200)
@given(keep_cases(), st.sampled_from(["linear", "exponential", "all"]))
def test_delete_is_the_complement_of_keep_oldest_first(case, mode):
    limit, epochs, now, best, protected = case
    doomed = epochs_to_delete(mode, limit, epochs, now, best, protected)
    assert doomed == sorted(doomed)
    assert set(doomed) == set(epochs) - epochs_to_keep(mode, limit, epochs, now, best,
                                                       protected)


def test_linear_example_keeps_newest_limit_and_the_best():
    assert epochs_to_delete("linear", 2, [1, 2, 3, 4, 5], 5, 1) == [2, 3]
    assert epochs_to_delete("linear", 2, [1, 2, 3, 4, 5], 5, 4) == [1, 2, 3]


@pytest.mark.parametrize("mode,limit,accepted", [
    ("fifo", 3, "'linear', 'exponential', 'all'"),
    ("linear", 0, "> 0"),
])
def test_bad_keep_arguments_are_refused(mode, limit, accepted):
    with pytest.raises(CkptParamError) as err:
        epochs_to_keep(mode, limit, [1], 1, None)
    assert accepted in str(err.value)


# ------------------------------------------------------------------ protected / restart order

def test_protected_are_last_best_restart_target_and_newest_valid():
    assert protected_epochs(last=8, best=5, restart_from=7, newest_valid=9) == {5, 7, 8, 9}
    assert protected_epochs(last=8, best=None) == {8}
    assert protected_epochs(last=None, best=None) == set()
    assert protected_epochs(last=6, best=6, restart_from=6, newest_valid=6) == {6}


@given(last=st.one_of(st.none(), st.integers(1, 50)),
       best=st.one_of(st.none(), st.integers(1, 50)),
       restart_from=st.one_of(st.none(), st.integers(1, 50)),
       newest_valid=st.one_of(st.none(), st.integers(1, 50)))
def test_protected_is_exactly_the_epochs_given(last, best, restart_from, newest_valid):
    given_ = [last, best, restart_from, newest_valid]
    got = protected_epochs(last=last, best=best, restart_from=restart_from,
                           newest_valid=newest_valid)
    assert got == {e for e in given_ if e is not None}


def test_restart_tries_last_then_older_complete_ones_newest_first():
    assert restart_order(5, [1, 2, 3, 4, 5, 6, 7]) == [5, 4, 3, 2, 1]
    assert restart_order(5, [7, 2, 2, 4]) == [5, 4, 2]  # never an epoch after last
    assert restart_order(3, []) == [3]  # last itself even when not complete: it is checked


@given(case=keep_cases(), mode=st.sampled_from(["linear", "exponential", "all"]))
def test_keep_with_the_protected_set_never_drops_a_protected_epoch(case, mode):
    limit, epochs, now, best, _ = case
    protected = protected_epochs(last=now, best=best, restart_from=min(epochs),
                                 newest_valid=max(epochs))
    kept = epochs_to_keep(mode, limit, epochs, now, best, protected)
    assert protected & set(epochs) <= kept


@given(recorded=st.dictionaries(st.integers(1, 30),
                                st.one_of(st.none(), st.floats(allow_nan=True), st.just(math.inf)),
                                max_size=8),
       sign=st.sampled_from(["+", "-"]))
def test_best_among_is_the_earliest_checkpoint_holding_the_best_finite_metric(recorded, sign):
    best = best_among(recorded, sign)
    finite = {e: v for e, v in recorded.items() if v is not None and math.isfinite(v)}
    if not finite:
        assert (best.epoch, best.value) == (None, None)
        return
    target = max(finite.values()) if sign == "+" else min(finite.values())
    assert best.value == target
    assert best.epoch == min(e for e, v in finite.items() if v == target)


# ------------------------------------------------------------------ rules, case by case
@pytest.mark.parametrize("metric", ["acc1", "val_acc1", "auc_2", "top5", "f1_score", "r2",
                                    "val_accuracy", "ACC", "val-iou", "dice12", "map50"])
def test_accuracy_like_names_with_trailing_digits_are_maximised(metric):
    d = best_direction(metric, "auto")
    assert d.sign == "+" and d.mode == "max"


@pytest.mark.parametrize("metric", ["loss", "val_loss", "mse", "mae2", "accident", "acc1x",
                                    "xacc", "1acc", "lr"])
def test_other_names_are_minimised(metric):
    d = best_direction(metric, "auto")
    assert d.sign == "-" and d.mode == "min"


def test_an_explicit_mode_wins_over_the_name():
    assert best_direction("acc", "min").sign == "-"
    assert best_direction("loss", "max").sign == "+"
    with pytest.raises(CkptParamError, match="auto"):
        best_direction("loss", "highest")


@pytest.mark.parametrize("value,best,sign,expected", [
    (1.0, 2.0, "-", True), (2.0, 1.0, "-", False), (1.0, 1.0, "-", False),
    (2.0, 1.0, "+", True), (1.0, 2.0, "+", False), (1.0, 1.0, "+", False),
    (1.0, None, "+", True), (1.0, math.inf, "-", True), (1.0, math.nan, "+", True),
    (None, 1.0, "-", False), (math.nan, None, "-", False), (math.inf, None, "+", False),
    (-math.inf, None, "-", False),
])
def test_is_improvement(value, best, sign, expected):
    assert is_improvement(value, best, sign) is expected


def test_is_improvement_refuses_an_unknown_sign():
    with pytest.raises(CkptParamError):
        is_improvement(1.0, 2.0, "min")


def test_best_tracker_after_keeps_itself_unless_improved():
    t = BestTracker("-")
    t1 = t.after(1, 0.5)
    assert (t1.value, t1.epoch, t1.sign) == (0.5, 1, "-")
    assert t1.after(2, 0.7) is t1
    assert t1.after(2, 0.7, "+").epoch == 2  # an explicit sign overrides
    assert t1.after(3, 0.4).epoch == 3


@pytest.mark.parametrize("epoch,skip,interval,best,new_best,total,save", [
    (1, 0, 1, True, False, 10, True), (3, 0, 2, True, False, 10, False),
    (4, 0, 2, False, False, 10, True), (3, 0, 2, True, True, 10, True),
    (3, 0, 2, False, True, 10, False), (10, 0, 3, False, False, 10, True),
    (10, 0, 3, False, False, None, False), (2, 2, 1, True, True, 10, False),
    (3, 2, 1, True, False, 10, True), (5, 0, 0, True, True, 5, False),
])
def test_should_save(epoch, skip, interval, best, new_best, total, save):
    d = should_save(epoch, epochs_total=total, skip_epochs=skip, save_interval=interval,
                    save_best=best, is_new_best=new_best)
    assert d.save is save


def test_should_save_refuses_a_negative_interval():
    with pytest.raises(CkptParamError):
        should_save(1, epochs_total=1, skip_epochs=0, save_interval=-1, save_best=True,
                    is_new_best=True)


def test_keep_linear_counts_the_best_within_the_limit():
    assert policy.epochs_to_keep("linear", 2, [1, 2, 3, 4, 5], 5, None) == {4, 5}
    assert policy.epochs_to_keep("linear", 2, [1, 2, 3, 4, 5], 5, 1) == {1, 4, 5}
    assert policy.epochs_to_keep("linear", 3, [1, 2, 3, 4, 5], 5, 4) == {3, 4, 5}
    assert policy.epochs_to_keep("linear", 1, [1, 2, 3], 3, None, protected=[1]) == {1, 3}


def test_keep_ignores_protected_epochs_this_run_did_not_write():
    assert policy.epochs_to_keep("linear", 1, [2, 3], 3, 7, protected=[9]) == {3}
    assert policy.epochs_to_keep("all", 1, [2, 3], 3, None, protected=[9]) == {2, 3}


def test_keep_exponential_keeps_the_newest_of_each_band():
    # ages 1, 2-3, 4-7, 8-15 back from 16
    kept = policy.epochs_to_keep("exponential", 100, range(1, 17), 16, None)
    assert kept == {16, 15, 14, 12, 8}
    assert policy.epochs_to_keep("exponential", 3, range(1, 17), 16, None) == {16, 15, 14}
    assert policy.epochs_to_keep("exponential", 2, range(1, 17), 16, 1) == {16, 1}
    # a checkpoint newer than now (left by a rollback) is kept
    assert 20 in policy.epochs_to_keep("exponential", 100, [1, 2, 20], 2, None)


@pytest.mark.parametrize("limit", [0, -1])
def test_keep_refuses_a_limit_below_one(limit):
    with pytest.raises(CkptParamError):
        policy.epochs_to_keep("linear", limit, [1], 1, None)


def test_keep_refuses_an_unknown_mode():
    with pytest.raises(CkptParamError, match="exponential"):
        policy.epochs_to_keep("newest", 1, [1], 1, None)


def test_delete_is_what_is_not_kept_oldest_first():
    assert policy.epochs_to_delete("linear", 2, [5, 1, 3, 2, 4], 5, None) == [1, 2, 3]


def test_restart_order_and_protected():
    assert policy.restart_order(5, [7, 1, 5, 3, 3]) == [5, 3, 1]
    assert policy.restart_order(0, []) == [0]
    assert policy.protected_epochs(last=3, best=None, restart_from=0, newest_valid=3) == {0, 3}
    assert policy.protected_epochs(last=None, best=None) == set()


def test_should_save_says_which_rule_decided():
    def reason(epoch, **kw):
        args = dict(epochs_total=10, skip_epochs=0, save_interval=3, save_best=True,
                    is_new_best=False)
        args.update(kw)
        return should_save(epoch, **args).reason

    reasons = [reason(5, save_interval=0), reason(1, skip_epochs=2), reason(4, is_new_best=True),
               reason(6), reason(10), reason(4)]
    assert all(isinstance(r, str) and r for r in reasons)
    assert len(set(reasons)) == len(reasons)
    assert "ckpt_save_interval=0" in reasons[0] and "ckpt_skip_epochs=2" in reasons[1]
    assert "best" in reasons[2] and "interval 3" in reasons[3] and "final" in reasons[4]


# ------------------------------------------------------------------ byte budget

def _sizes(sizes):
    return lambda keys: sum(sizes[k] for k in keys)


def test_the_byte_budget_gives_up_the_oldest_unprotected_until_the_rest_fits():
    sizes = {1: 10, 2: 10, 3: 10, 4: 10, 5: 10}
    doomed, used = policy.epochs_over_budget(30, sizes, {2, 5}, _sizes(sizes))
    assert (doomed, used) == ([1, 3], 30)


def test_a_budget_already_met_deletes_nothing():
    sizes = {1: 10, 2: 10}
    assert policy.epochs_over_budget(20, sizes, set(), _sizes(sizes)) == ([], 20)


def test_a_budget_the_protected_ones_exceed_deletes_all_else_and_reports_the_excess():
    sizes = {1: 10, 2: 50, 3: 10, 4: 50}
    doomed, used = policy.epochs_over_budget(40, sizes, {2, 4}, _sizes(sizes))
    assert doomed == [1, 3] and used == 100


def test_a_budget_below_one_byte_is_refused_naming_the_parameter():
    with pytest.raises(CkptParamError, match="'ckpt_keep_bytes'"):
        policy.epochs_over_budget(0, [1], set(), lambda keys: 0)


@settings(max_examples=200, deadline=None)
@given(sizes=st.dictionaries(st.integers(1, 40), st.integers(0, 100), max_size=12),
       protected=st.sets(st.integers(1, 40), max_size=4),
       budget=st.integers(1, 600))
def test_the_byte_budget_never_deletes_protected_and_stops_as_soon_as_it_fits(
        sizes, protected, budget):
    doomed, used = policy.epochs_over_budget(budget, sizes, protected, _sizes(sizes))
    remaining = set(sizes) - set(doomed)
    assert not set(doomed) & protected
    assert doomed == sorted(doomed) and used == sum(sizes[k] for k in remaining)
    unprotected_left = sorted(remaining - protected)
    if used > budget:  # could not fit: everything unprotected was given up
        assert not unprotected_left
    if doomed:  # without the newest deletion it did not fit yet; older ones all went
        assert used + sizes[doomed[-1]] > budget
        assert all(k > doomed[-1] for k in unprotected_left)
