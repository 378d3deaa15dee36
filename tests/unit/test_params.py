"""CANDLE hyperparameters: defaults, conversions, parser/defs glue, errors at construction."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import candle_ckpt
from candle_ckpt import (
    CandleCkpt,
    CkptParamError,
    CkptParamTypeError,
    ParamRequired,
    ParamType,
    ckpt_defs,
    ckpt_parser,
    disabled,
    enabled,
    param,
    param_allowed,
    param_type_check,
    params,
)
from candle_ckpt.params import CKPT_PARAMS, DEFAULT_DIRECTORY, read_settings
from candle_ckpt.testing import CandleCkptFiles

SPEC_DEFAULTS = {
    "ckpt_restart_mode": "auto",
    "ckpt_save_best": True,
    "ckpt_save_best_metric": "val_loss",
    "ckpt_skip_epochs": 0,
    "ckpt_save_interval": 1,
    "ckpt_checksum": False,
    "ckpt_keep_mode": "linear",
    "ckpt_keep_limit": 1000000,
    "ckpt_metadata": None,
}
# ckpt_directory's spec default, ./save, is applied by read_settings, after output_dir: a
# default in the parameter table would reach gParameters through ckpt_parser/ckpt_defs
# and hide output_dir (candle_lib's behaviour).
SPEC_DIRECTORY = Path("./save")


def test_param_type_member_values_match_the_original():
    assert {m.name: m.value for m in ParamType} == {
        "STRING": 1, "BOOLEAN": 2, "INTEGER": 3, "INTEGER_NN": 4,
        "INTEGER_GZ": 5, "FLOAT": 6, "FLOAT_NN": 7,
    }


def test_every_spec_hyperparameter_has_the_spec_default():
    s = read_settings({"epochs": 3})
    assert s.restart_mode == "auto"
    assert s.save_best is True
    assert s.save_best_metric == "val_loss"
    assert s.save_best_mode == "auto"
    assert s.skip_epochs == 0
    assert s.save_interval == 1
    assert s.checksum is False
    assert s.keep_mode == "linear"
    assert s.keep_limit == 1000000
    assert s.directory == SPEC_DIRECTORY
    assert s.directory_source.startswith("default ./save")
    assert s.metadata is None
    assert s.epochs == 3
    assert s.save_weights_only is False
    assert s.best_metric_last is None


def test_parameter_table_defaults_match_the_spec():
    table = {d.name: d.default for d in CKPT_PARAMS}
    for key, default in SPEC_DEFAULTS.items():
        assert table[key] == default, key
    assert table["ckpt_directory"] is None and Path(DEFAULT_DIRECTORY) == SPEC_DIRECTORY
    assert {"ckpt_save_weights_only", "ckpt_best_metric_last", "ckpt_save_best_mode"} <= set(table)


def test_strings_from_candle_parameter_files_are_converted():
    s = read_settings({
        "epochs": "7", "ckpt_save_best": "false", "ckpt_checksum": "true",
        "ckpt_skip_epochs": "0", "ckpt_save_interval": "5", "ckpt_keep_limit": "3",
        "ckpt_save_weights_only": "1", "ckpt_best_metric_last": "0.25",
    })
    assert (s.epochs, s.save_best, s.checksum) == (7, False, True)
    assert (s.skip_epochs, s.save_interval, s.keep_limit) == (0, 5, 3)
    assert s.save_weights_only is True
    assert s.best_metric_last == 0.25


@pytest.mark.parametrize("text,expected", [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
    (" true ", True), (True, True), (False, False), (1, True), (0, False),
])
def test_boolean_spellings_convert(text, expected):
    assert param_type_check("ckpt_checksum", text, ParamType.BOOLEAN) is expected


@pytest.mark.parametrize("type_,text,expected", [
    (ParamType.INTEGER, "-4", -4),
    (ParamType.INTEGER_NN, "0", 0),
    (ParamType.INTEGER_GZ, "5", 5),
    (ParamType.INTEGER_GZ, 5.0, 5),
    (ParamType.FLOAT, "-1.5", -1.5),
    (ParamType.FLOAT_NN, "0", 0.0),
    (ParamType.STRING, Path("a/b"), "a/b"),
])
def test_typed_values_convert(type_, text, expected):
    assert param_type_check("k", text, type_) == expected


def test_values_may_come_from_a_namespace():
    ns = argparse.Namespace(epochs=4, ckpt_keep_mode="exponential", ckpt_keep_limit="2",
                            ckpt_save_best="false")
    s = read_settings(ns)
    assert (s.epochs, s.keep_mode, s.keep_limit, s.save_best) == (4, "exponential", 2, False)
    assert param(ns, "ckpt_keep_limit", 9, ParamType.INTEGER_GZ) == 2
    assert param(ns, "absent", 9, ParamType.INTEGER_GZ) == 9


def test_older_metadata_name_is_accepted():
    assert read_settings({"epochs": 1, "metadata": "job 42"}).metadata == "job 42"
    both = {"epochs": 1, "metadata": "old", "ckpt_metadata": "new"}
    assert read_settings(both).metadata == "new"


def test_enabled_and_disabled_read_string_booleans():
    g = {"a": "true", "b": "0", "c": None}
    assert enabled(g, "a") and not disabled(g, "a")
    assert disabled(g, "b") and not enabled(g, "b")
    assert not enabled(g, "c") and not disabled(g, "c")
    assert not enabled(g, "missing") and not disabled(g, "missing")
    assert enabled(argparse.Namespace(a="yes"), "a")


def test_required_parameter_missing_raises_naming_it():
    with pytest.raises(CkptParamError, match="'epochs'"):
        param({}, "epochs", ParamRequired(), ParamType.INTEGER_NN)
    with pytest.raises(CkptParamError, match="'epochs'"):
        read_settings({"ckpt_directory": "x"})


def test_param_allowed_lists_the_accepted_values():
    param_allowed("ckpt_keep_mode", "all", ("linear", "all"))
    param_allowed("anything", 3, None)
    with pytest.raises(CkptParamError) as err:
        param_allowed("ckpt_keep_mode", "fancy", ("linear", "all"))
    assert "'ckpt_keep_mode'" in str(err.value)
    assert "'fancy'" in str(err.value)
    assert "'linear'" in str(err.value) and "'all'" in str(err.value)


@pytest.mark.parametrize("key,value,accepted", [
    ("ckpt_restart_mode", "sometimes", "'required'"),
    ("ckpt_keep_mode", "quadratic", "'exponential'"),
    ("ckpt_save_best_mode", "up", "'max'"),
    ("ckpt_keep_limit", 0, "> 0"),
    ("ckpt_keep_limit", "-3", "> 0"),
    ("ckpt_skip_epochs", -1, ">= 0"),
    ("ckpt_save_interval", "-2", ">= 0"),
    ("ckpt_save_best", "maybe", "true/false"),
    ("ckpt_checksum", 2, "true/false"),
    ("ckpt_keep_limit", "many", "integer"),
    ("ckpt_best_metric_last", "high", "number"),
    ("epochs", -5, ">= 0"),
])
def test_bad_value_error_names_key_value_and_what_is_accepted(key, value, accepted):
    params = {"epochs": 3, key: value}
    with pytest.raises(CkptParamError) as err:
        read_settings(params)
    message = str(err.value)
    assert repr(key) in message
    assert str(value) in message
    assert accepted in message
    assert isinstance(err.value, ValueError)


def test_unconvertible_value_is_also_a_type_error_as_in_the_original():
    with pytest.raises(TypeError):
        param_type_check("ckpt_keep_limit", "many", ParamType.INTEGER_GZ)
    assert issubclass(CkptParamTypeError, CkptParamError)


def test_gparameters_of_another_type_is_refused():
    with pytest.raises(CkptParamError, match="dict or an argparse.Namespace"):
        read_settings([("epochs", 3)])


@pytest.mark.parametrize("bad", [
    {"ckpt_keep_limit": 0},
    {"ckpt_keep_bytes": "50 gallons"},
    {"ckpt_restart_mode": "maybe"},
    {"ckpt_save_best": "perhaps"},
    {"epochs": None},
    {"ckpt_best_metric_last": "nan"},
])
def test_bad_parameter_raises_before_the_directory_is_created(tmp_path, bad):
    target = tmp_path / "ckpts-here"
    params = {"epochs": 3, "ckpt_directory": str(target), **bad}
    with pytest.raises(CkptParamError):
        CandleCkptFiles(params, logger=None)
    assert not target.exists()


def test_bad_parameter_leaves_an_existing_directory_untouched(tmp_path):
    target = tmp_path / "used"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(CkptParamError):
        CandleCkpt({"epochs": 3, "ckpt_directory": str(target), "ckpt_keep_mode": "x"},
                   logger=None)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_bad_logger_raises_before_anything_is_written(tmp_path):
    target = tmp_path / "new"
    with pytest.raises(CkptParamError, match="logger"):
        CandleCkptFiles({"epochs": 3, "ckpt_directory": str(target)}, logger=42)
    assert not target.exists()


def test_ckpt_directory_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a dir")
    with pytest.raises(CkptParamError, match="'ckpt_directory'"):
        CandleCkptFiles({"epochs": 3, "ckpt_directory": str(f)}, logger=None)
    assert f.read_text() == "not a dir"


def test_ckpt_parser_parses_real_argv():
    parser = ckpt_parser(argparse.ArgumentParser())
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args([
        "--epochs", "6", "--ckpt_save_best", "false", "--ckpt_checksum", "true",
        "--ckpt_keep_mode", "exponential", "--ckpt_keep_limit", "3",
        "--ckpt_save_interval", "2", "--ckpt_directory", "/tmp/x",
        "--ckpt_restart_mode", "required", "--ckpt_save_best_mode", "max",
    ])
    s = read_settings(args)
    assert (s.epochs, s.save_best, s.checksum) == (6, False, True)
    assert (s.keep_mode, s.keep_limit, s.save_interval) == ("exponential", 3, 2)
    assert (s.directory, s.restart_mode, s.save_best_mode) == (Path("/tmp/x"), "required", "max")


def test_ckpt_parser_defaults_are_the_spec_defaults():
    args = ckpt_parser(argparse.ArgumentParser()).parse_args([])
    for key, default in SPEC_DEFAULTS.items():
        assert getattr(args, key) == default, key
    assert args.ckpt_directory is None
    assert read_settings(args, epochs_required=False).directory == SPEC_DIRECTORY


def test_ckpt_parser_does_not_hide_output_dir():
    parser = ckpt_parser(argparse.ArgumentParser())
    parser.add_argument("--output_dir", default=None)
    s = read_settings(parser.parse_args(["--output_dir", "/runs/a"]), epochs_required=False)
    assert (s.directory, s.directory_source) == (Path("/runs/a"),
                                                 "output_dir (ckpt_directory is not set)")
    assert "output_dir" in parser.format_help()  # the help says where the default comes from


# ------------------------------------------------------------------ the checkpoint root

@pytest.mark.parametrize("given,directory,source", [
    ({"ckpt_directory": "ck", "output_dir": "out"}, "ck", "ckpt_directory"),
    ({"ckpt_directory": "ck"}, "ck", "ckpt_directory"),
    ({"ckpt_directory": None, "output_dir": "out"}, "out",
     "output_dir (ckpt_directory is not set)"),
    ({"output_dir": "out"}, "out", "output_dir (ckpt_directory is not set)"),
    ({"ckpt_directory": None, "output_dir": None}, "save",
     "default ./save (neither ckpt_directory nor output_dir is set)"),
    ({}, "save", "default ./save (neither ckpt_directory nor output_dir is set)"),
])
def test_checkpoint_root_is_ckpt_directory_else_output_dir_else_save(given, directory, source):
    s = read_settings({"epochs": 1, **given})
    assert s.directory == Path(directory)
    assert s.directory_source == source


def test_candle_lib_finalized_parameters_checkpoint_under_output_dir(tmp_path):
    # candle_lib's finalize_parameters passes ckpt_directory=None; its CandleCkpt then
    # writes output_dir/ckpts/{epochs,last,best}: our layout's paths under output_dir.
    ns = argparse.Namespace(epochs=2, ckpt_directory=None, output_dir=str(tmp_path / "out"))
    s = read_settings(ns)
    assert s.directory == tmp_path / "out"
    assert "output_dir" in s.directory_source


@pytest.mark.parametrize("key", ["ckpt_directory", "output_dir"])
def test_an_empty_checkpoint_root_is_refused_naming_its_key(key):
    with pytest.raises(CkptParamError, match=f"'{key}'.*empty"):
        read_settings({"epochs": 1, key: "  "})


def test_a_non_string_output_dir_is_refused_naming_it():
    with pytest.raises(CkptParamError, match="'output_dir'"):
        read_settings({"epochs": 1, "output_dir": 42})


def test_ckpt_parser_rejects_a_bad_choice_and_a_bad_boolean(capsys):
    parser = ckpt_parser(argparse.ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(["--ckpt_keep_mode", "quadratic"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--ckpt_save_best", "maybe"])
    assert "ckpt_save_best" in capsys.readouterr().err


def test_ckpt_defs_extends_user_definitions():
    user = [{"name": "epochs", "type": int, "default": 1, "help": "epochs"}]
    defs = ckpt_defs(user)
    assert defs[0] is user[0] and len(user) == 1
    by_name = {d["name"]: d for d in defs}
    assert set(SPEC_DEFAULTS) <= set(by_name)
    for key, default in SPEC_DEFAULTS.items():
        assert by_name[key]["default"] == default, key
    assert by_name["ckpt_directory"]["default"] is None  # read_settings applies ./save
    assert by_name["ckpt_save_best"]["type"]("false") is False
    assert by_name["ckpt_keep_limit"]["type"]("5") == 5
    assert by_name["ckpt_keep_mode"]["choices"] == ["linear", "exponential", "all"]


def test_top_level_names_are_the_params_functions():
    assert candle_ckpt.ParamType is ParamType
    assert candle_ckpt.param is param


@pytest.mark.parametrize(("key", "value", "says"), [
    ("ckpt_best_metric_last", 10 ** 400, "too large"),
    ("ckpt_best_metric_last", -(10 ** 400), "too large"),
    ("ckpt_walltime_margin", 10 ** 400, "too large"),
    ("ckpt_directory", "runs/a\0b", "NUL"),
    ("output_dir", "out\0put", "NUL"),
])
def test_unrepresentable_values_are_refused_naming_the_parameter(key, value, says):
    from candle_ckpt.params import read_settings

    with pytest.raises(CkptParamError, match=says) as err:
        read_settings({"epochs": 3, key: value})
    assert key in str(err.value)


def test_a_misspelt_ckpt_key_is_named_with_the_closest_known_one():
    from candle_ckpt.params import unknown_key_warnings

    (warning,) = unknown_key_warnings({"epochs": 2, "ckpt_keep_limt": 1, "ckpt_keep_limit": 2,
                                       "learning_rate": 0.1})
    assert "'ckpt_keep_limt'" in warning and "did you mean 'ckpt_keep_limit'?" in warning
    (warning,) = unknown_key_warnings(argparse.Namespace(ckpt_zzzzzzzz=1, epochs=2))
    assert "'ckpt_zzzzzzzz'" in warning and "ckpt_restart_mode" in warning
    assert unknown_key_warnings({"ckpt_checksum": True, "other": 1, 3: 4}) == []
    assert unknown_key_warnings(None) == []


def _docs_hooks():
    """scripts/docs_hooks.py, the MkDocs hook that writes the guide's parameter table."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "docs_hooks.py"
    spec = importlib.util.spec_from_file_location("docs_hooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_parameter_table_has_one_row_per_parameter_with_its_default_and_choices():
    rows = _docs_hooks().parameters_table().splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == [f"`{d.name}`" for d in CKPT_PARAMS]
    by_name = {row.split("|")[1].strip().strip("`"): row for row in rows}
    assert "| `\"auto\"` | `off`, `auto`, `required` |" in by_name["ckpt_restart_mode"]
    assert "| `1000000` | integer > 0 |" in by_name["ckpt_keep_limit"]
    assert "| `false` | boolean |" in by_name["ckpt_checksum"]
    assert "| `300` | number ≥ 0 |" in by_name["ckpt_walltime_margin"]
    assert "| *unset* | string |" in by_name["ckpt_directory"]
    # A "|" in a help text is escaped, so it stays inside its cell.
    assert all(row.count("|") - row.count("\\|") == 5 for row in rows)


# ------------------------------------------ conversions, ranges, the settings record
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


@pytest.mark.parametrize(("value", "size"), [
    (None, None), ("none", None), ("", None), (" None ", None),
    (123, 123), ("4096", 4096), ("50G", 50 * 1024 ** 3), ("800m", 800 * 1024 ** 2),
    ("1.5T", int(1.5 * 1024 ** 4)), ("2TB", 2 * 1000 ** 4), ("10 GiB", 10 * 1024 ** 3),
    ("512K", 512 * 1024), ("3kb", 3000), ("7b", 7),
])
def test_ckpt_keep_bytes_reads_bytes_and_sizes_with_units(value, size):
    assert read_settings({"epochs": 3, "ckpt_keep_bytes": value}).keep_bytes == size


def test_ckpt_keep_bytes_defaults_to_no_budget():
    assert read_settings({"epochs": 3}).keep_bytes is None


@pytest.mark.parametrize("bad", ["50 gallons", "G", "-5G", "0", 0.2, True, [50], "1e9"])
def test_a_bad_ckpt_keep_bytes_names_the_parameter_value_and_what_is_accepted(bad):
    with pytest.raises(CkptParamError) as err:
        read_settings({"epochs": 3, "ckpt_keep_bytes": bad})
    text = str(err.value)
    assert "'ckpt_keep_bytes'" in text and repr(bad) in text and "'50G'" in text


def test_ckpt_keep_bytes_comes_from_the_command_line():
    ns = ckpt_parser(argparse.ArgumentParser()).parse_args(["--ckpt_keep_bytes", "2G"])
    assert read_settings(ns, epochs_required=False).keep_bytes == 2 * 1024 ** 3
