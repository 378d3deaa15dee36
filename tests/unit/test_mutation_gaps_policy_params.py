"""policy and params: rules a mutation run showed no test deciding (issue 17)."""

from __future__ import annotations

import argparse
import math

import pytest

from candle_ckpt import params, policy
from candle_ckpt.errors import CkptParamError, CkptParamTypeError
from candle_ckpt.params import ParamType, param, param_type_check, read_settings
from candle_ckpt.policy import BestTracker, best_direction, is_improvement, should_save


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


# --- params -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-1, -0.5, "-2", -1e-300, float("nan"), "nan"])
def test_a_negative_or_nan_float_nn_is_refused(value):
    with pytest.raises(CkptParamError) as err:
        param_type_check("ckpt_walltime_margin", value, ParamType.FLOAT_NN)
    assert not isinstance(err.value, CkptParamTypeError)  # a range error, not a type one


@pytest.mark.parametrize("value,expected", [(0, 0.0), ("0", 0.0), (2.5, 2.5), (" 3 ", 3.0),
                                            (-0.0, 0.0)])
def test_a_non_negative_float_nn_is_accepted(value, expected):
    assert param_type_check("k", value, ParamType.FLOAT_NN) == expected


def test_a_plain_float_may_be_negative():
    assert param_type_check("k", "-2.5", ParamType.FLOAT) == -2.5


def test_negative_float_nn_settings_are_refused_by_read_settings():
    for key in ("ckpt_save_interval_seconds", "ckpt_walltime_margin"):
        with pytest.raises(CkptParamError, match=key):
            read_settings({"epochs": 1, key: -1})
    s = read_settings({"epochs": 1, "ckpt_save_interval_seconds": "0",
                       "ckpt_walltime_margin": 0})
    assert (s.save_interval_seconds, s.walltime_margin) == (0.0, 0.0)


@pytest.mark.parametrize("value,type_,expected", [
    (0, ParamType.INTEGER_NN, 0), (1, ParamType.INTEGER_GZ, 1), (-3, ParamType.INTEGER, -3),
    (2.0, ParamType.INTEGER_NN, 2), (" 7 ", ParamType.INTEGER_GZ, 7),
])
def test_integers_in_range_are_accepted(value, type_, expected):
    assert param_type_check("k", value, type_) == expected


@pytest.mark.parametrize("value,type_", [(-1, ParamType.INTEGER_NN), (0, ParamType.INTEGER_GZ),
                                         (-1, ParamType.INTEGER_GZ)])
def test_integers_out_of_range_are_a_range_error(value, type_):
    with pytest.raises(CkptParamError) as err:
        param_type_check("k", value, type_)
    assert not isinstance(err.value, CkptParamTypeError)


@pytest.mark.parametrize("value", [True, 2.5, "x", [1], None.__class__])
def test_non_integers_are_a_type_error(value):
    with pytest.raises(CkptParamTypeError):
        param_type_check("k", value, ParamType.INTEGER)


@pytest.mark.parametrize("value", [True, "x", [1.0], None.__class__])
def test_non_floats_are_a_type_error(value):
    with pytest.raises(CkptParamTypeError):
        param_type_check("k", value, ParamType.FLOAT)


@pytest.mark.parametrize("text,expected", [("true", True), ("T", True), (" yes ", True),
                                           ("on", True), ("1", True), ("y", True),
                                           ("false", False), ("F", False), ("no", False),
                                           ("off", False), ("0", False), ("n", False),
                                           (1, True), (0, False), (True, True)])
def test_booleans(text, expected):
    assert param_type_check("k", text, ParamType.BOOLEAN) is expected


@pytest.mark.parametrize("value", ["maybe", 2, 1.0, None.__class__, ""])
def test_non_booleans_are_a_type_error(value):
    with pytest.raises(CkptParamTypeError):
        param_type_check("k", value, ParamType.BOOLEAN)


def test_strings_and_paths():
    from pathlib import Path

    assert param_type_check("k", Path("a/b"), ParamType.STRING) == "a/b"
    assert param_type_check("k", None, ParamType.INTEGER) is None
    with pytest.raises(CkptParamTypeError):
        param_type_check("k", 3, ParamType.STRING)


def test_param_defaults_required_and_allowed():
    assert param({}, "k", 3, ParamType.INTEGER) == 3
    assert param({"k": None}, "k", 3, ParamType.INTEGER) == 3
    assert param(argparse.Namespace(k="4"), "k", 3, ParamType.INTEGER) == 4
    assert param(None, "k", "x") == "x"
    with pytest.raises(CkptParamError, match="required"):
        param({}, "k", params.ParamRequired())
    with pytest.raises(CkptParamError, match="required"):
        param({}, "k", params.ParamRequired)
    with pytest.raises(CkptParamError, match="'a', 'b'"):
        param({"k": "c"}, "k", "a", ParamType.STRING, ("a", "b"))


def test_enabled_and_disabled():
    assert params.enabled({"k": "yes"}, "k") and not params.disabled({"k": "yes"}, "k")
    assert params.disabled({"k": 0}, "k") and not params.enabled({"k": 0}, "k")
    assert not params.enabled({}, "k") and not params.disabled({}, "k")
    assert not params.enabled({"k": None}, "k") and not params.disabled({"k": None}, "k")


def test_read_settings_directory_sources(tmp_path):
    s = read_settings({"epochs": 1, "ckpt_directory": str(tmp_path)})
    assert s.directory == tmp_path and s.directory_source == "ckpt_directory"
    s = read_settings({"epochs": 1, "output_dir": str(tmp_path)})
    assert s.directory == tmp_path and s.directory_source.startswith("output_dir")
    s = read_settings({"epochs": 1})
    assert str(s.directory) == "save" and s.directory_source.startswith("default")
    for key in ("ckpt_directory", "output_dir"):
        with pytest.raises(CkptParamError, match=key):
            read_settings({"epochs": 1, key: "  "})
        with pytest.raises(CkptParamError, match="NUL"):
            read_settings({"epochs": 1, key: "a\0b"})


def test_read_settings_checks_the_whole_record():
    with pytest.raises(CkptParamError, match="epochs"):
        read_settings({})
    assert read_settings({}, epochs_required=False).epochs is None
    with pytest.raises(CkptParamError, match="gParameters"):
        read_settings([("epochs", 1)])
    with pytest.raises(CkptParamError, match="nan"):
        read_settings({"epochs": 1, "ckpt_best_metric_last": "nan"})
    with pytest.raises(CkptParamError, match="ckpt_save_best_metric"):
        read_settings({"epochs": 1, "ckpt_save_best_metric": ""})
    s = read_settings({"epochs": 1, "ckpt_save_best": False, "ckpt_save_best_metric": ""})
    assert s.save_best is False
    assert read_settings({"epochs": 1, "metadata": "job 7"}).metadata == "job 7"
    assert read_settings({"epochs": 1, "metadata": "a", "ckpt_metadata": "b"}).metadata == "b"
    s = read_settings({"epochs": 1, "ckpt_signals": ["SIGUSR1"]})
    assert s.signals == ["SIGUSR1"]


def test_read_settings_defaults():
    s = read_settings({"epochs": 3})
    assert (s.restart_mode, s.save_best, s.save_best_metric, s.save_best_mode) == (
        "auto", True, "val_loss", "auto")
    assert (s.skip_epochs, s.save_interval, s.checksum, s.keep_mode, s.keep_limit) == (
        0, 1, False, "linear", 1000000)
    assert (s.save_weights_only, s.best_metric_last, s.async_save, s.epochs) == (
        False, None, False, 3)
    assert (s.signals, s.requeue, s.save_interval_seconds, s.walltime_end,
            s.walltime_margin) == ("auto", "auto", 0.0, "auto", 300.0)


def test_ckpt_parser_and_defs_cover_every_parameter():
    parser = params.ckpt_parser(argparse.ArgumentParser())
    ns = parser.parse_args(["--ckpt_save_best", "no", "--ckpt_keep_limit", "3",
                            "--ckpt_walltime_margin", "1.5"])
    assert ns.ckpt_save_best is False and ns.ckpt_keep_limit == 3
    assert ns.ckpt_walltime_margin == 1.5 and ns.ckpt_restart_mode == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--ckpt_keep_mode", "newest"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--ckpt_checksum", "maybe"])
    defs = params.ckpt_defs([{"name": "x"}])
    assert defs[0] == {"name": "x"}
    by_name = {d["name"]: d for d in defs[1:]}
    assert set(by_name) == {d.name for d in params.CKPT_PARAMS}
    assert by_name["ckpt_keep_mode"]["choices"] == ["linear", "exponential", "all"]
    assert by_name["ckpt_keep_limit"]["type"] is int
    assert by_name["ckpt_walltime_margin"]["type"] is float
    assert by_name["ckpt_metadata"]["type"] is str
    assert "choices" not in by_name["ckpt_metadata"]


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
