"""policy.BestTracker: the best metric so far, frozen; a new tracker per new best."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from candle_ckpt.policy import BestTracker

metrics = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


def test_a_lower_loss_is_a_new_best_and_moves_the_epoch():
    t = BestTracker("-", 0.5, 2)
    assert t.improved(0.4) and not t.improved(0.5) and not t.improved(0.6)
    nxt = t.after(3, 0.4)
    assert (nxt.value, nxt.epoch) == (0.4, 3)
    assert (t.value, t.epoch) == (0.5, 2)  # frozen: the old one is unchanged


def test_max_direction_and_per_call_sign():
    t = BestTracker("+", 0.8, 1)
    assert t.improved(0.9) and not t.improved(0.7)
    assert t.improved(0.7, "-")  # a call may give its own direction (CANDLE's "+"/"-")


def test_no_best_yet_takes_any_finite_value_but_never_nan_or_inf():
    t = BestTracker("-")
    assert t.improved(123.0)
    assert not t.improved(float("nan")) and not t.improved(float("inf"))
    assert not t.improved(None)
    assert t.after(1, float("nan")) is t


@given(st.sampled_from("+-"), st.lists(metrics, max_size=30))
def test_the_tracked_best_is_the_best_finite_value_seen(sign, values):
    t = BestTracker(sign)
    for epoch, v in enumerate(values, start=1):
        t = t.after(epoch, v)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        assert t.value is None and t.epoch is None
        return
    best = max(finite) if sign == "+" else min(finite)
    assert t.value == best
    assert t.epoch is not None and values[t.epoch - 1] == best
    assert values.index(best) + 1 == t.epoch  # the first epoch reaching it (strict improve)
