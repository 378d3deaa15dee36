"""record: SaveRecord -> ckpt-info.json and back, pure (the schema in one place)."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from candle_ckpt.record import (
    FIRST,
    FORMAT_VERSION,
    SaveRecord,
    Written,
    as_metric,
    read_record,
    to_info,
)
from candle_ckpt.storage.integrity import DISABLED


def record(**changes):
    values = dict(epoch=3, metric_value=0.25, is_best=True, best_metric_last=0.25,
                  epoch_best=3, save_best_metric="val_loss", best_mode="min",
                  checksum_algorithm="xxh3_64", metadata="job 7", backend="files",
                  time=1_700_000_000.0, time_previous=1_699_999_990.5)
    values.update(changes)
    return SaveRecord(**values)


def test_to_info_holds_the_spec_fields_and_ours():
    files = {"model.bin": {"size": 3, "checksum": "abc"}, "x.bin": {"size": 1}}
    info = to_info(record(), Written("model.bin", {"entries": ["model"]}), files)
    assert info["format_version"] == FORMAT_VERSION
    assert (info["epoch"], info["best_metric_last"], info["epoch_best"]) == (3, 0.25, 3)
    assert info["checksum"] == "abc" and info["checksum_algorithm"] == "xxh3_64"
    assert info["model_file"] == "model.bin" and info["files"] == files
    assert info["time_elapsed"] == 9.5 and info["metadata"] == "job 7"
    assert info["entries"] == ["model"] and info["backend"] == "files"
    assert len(info["timestamp"]) == len("2023-11-14 22:13:20")
    json.dumps(info, allow_nan=False)  # strict JSON


def test_first_save_and_disabled_checksum():
    info = to_info(record(time_previous=None, checksum_algorithm=None),
                   Written("m", {}), {"m": {"size": 1}})
    assert info["time_elapsed"] == FIRST and info["checksum"] == "__DISABLED__"


def test_a_backend_cannot_override_the_engines_fields():
    info = to_info(record(), Written("m", {"epoch": 99, "extra": 1}), {"m": {"size": 1}})
    assert info["epoch"] == 3 and info["extra"] == 1


def test_read_record_round_trips_what_to_info_wrote():
    info = to_info(record(), Written("m", {}), {"m": {"size": 1}})
    r = read_record(json.loads(json.dumps(info)))
    assert (r.epoch, r.best_metric_last, r.epoch_best, r.original_candle) == (3, 0.25, 3, False)


@pytest.mark.parametrize("epoch", [1.0, "3", None, True, -1, [3], {"a": 1}])
def test_epoch_must_be_a_non_negative_int(epoch):
    with pytest.raises(ValueError, match="epoch"):
        read_record({"epoch": epoch, "format_version": 1})


@pytest.mark.parametrize("best", ["x", [1], {"a": 1}, 10 ** 400])
def test_a_non_numeric_best_is_refused(best):
    with pytest.raises(ValueError, match="best_metric_last"):
        read_record({"epoch": 1, "best_metric_last": best})


def test_original_candle_info_is_recognized_and_bad_epoch_best_ignored():
    r = read_record({"epoch": 2, "best_metric_last": "0.5", "epoch_best": "x"})
    assert r.original_candle and r.best_metric_last == 0.5 and r.epoch_best is None


@given(st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-10**6, 10**6),
                 st.booleans()))
def test_as_metric_takes_numbers(value):
    got = as_metric(value)
    if value is None:
        assert got is None
    elif isinstance(value, float) and math.isnan(value):
        assert got is not None and math.isnan(got)
    else:
        assert got == float(value)


@pytest.mark.parametrize("value", ["abc", object(), [1.0], 10 ** 400])
def test_as_metric_refuses_non_numbers(value):
    with pytest.raises(ValueError):
        as_metric(value, "metric_value")


# ------------------------------------------------------------------ the schema, field by field
T = datetime(2026, 3, 4, 5, 6, 7).timestamp()


def _record(**kw) -> SaveRecord:
    values = dict(epoch=3, metric_value=0.25, is_best=True, best_metric_last=0.25,
                  epoch_best=3, save_best_metric="val_loss", best_mode="min",
                  checksum_algorithm="xxh3_64", metadata="job 7", backend="files", time=T,
                  time_previous=None)
    values.update(kw)
    return SaveRecord(**values)


def test_to_info_writes_every_field_of_the_schema():
    files = {"m.bin": {"size": 4, "checksum": "abc"}, "x.bin": {"size": 1}}
    info = to_info(_record(), Written("m.bin", {"extra": 1}), files)
    assert info == {
        "format_version": FORMAT_VERSION, "epoch": 3, "batch": 0, "partial": False,
        "save_best_metric": "val_loss", "best_metric_last": 0.25, "epoch_best": 3,
        "best_mode": "min", "metric_value": 0.25, "model_file": "m.bin", "checksum": "abc",
        "checksum_algorithm": "xxh3_64", "files": files, "timestamp": "2026-03-04 05:06:07",
        "time_elapsed": FIRST, "metadata": "job 7", "backend": "files", "extra": 1,
    }
    assert FORMAT_VERSION == 1


def test_to_info_of_a_mid_epoch_save_and_a_later_save():
    info = to_info(_record(batch=12, time_previous=T - 1.2500004), Written("m.bin", {}),
                   {"m.bin": {"size": 4}})
    assert info["batch"] == 12 and info["partial"] is True
    assert info["time_elapsed"] == 1.25
    assert info["checksum"] == DISABLED  # no checksum recorded for the model file


def test_to_info_without_the_model_file_in_the_manifest_has_no_checksum():
    info = to_info(_record(), Written("m.bin", {}), {})
    assert info["checksum"] == DISABLED and info["files"] == {}


def test_a_backend_never_overrides_the_engines_fields():
    info = to_info(_record(), Written("m.bin", {"epoch": 99, "backend": "evil", "own": "x"}),
                   {"m.bin": {"size": 1}})
    assert info["epoch"] == 3 and info["backend"] == "files" and info["own"] == "x"


@pytest.mark.parametrize("value,expected", [(None, None), (1, 1.0), (0.5, 0.5), ("0.5", 0.5),
                                            (" 2 ", 2.0), (True, 1.0), ("inf", math.inf)])
def test_as_metric_converts_numbers(value, expected):
    result = as_metric(value)
    assert result == expected and (result is None or type(result) is float)


@pytest.mark.parametrize("value", ["low", [1], {}, None.__class__])
def test_as_metric_refuses_what_is_not_a_number_naming_the_field(value):
    with pytest.raises(ValueError, match="best_metric_last"):
        as_metric(value, "best_metric_last")


def test_as_metric_refuses_an_integer_too_large_for_a_float():
    with pytest.raises(ValueError, match="too large"):
        as_metric(10 ** 400, "metric_value")


def _info(**kw):
    info = {"format_version": 1, "epoch": 4, "best_metric_last": 0.5, "epoch_best": 2}
    info.update(kw)
    return info


def test_read_record_of_a_good_info():
    r = read_record(_info())
    assert (r.epoch, r.best_metric_last, r.epoch_best, r.original_candle, r.batch) == (
        4, 0.5, 2, False, 0)
    r = read_record({"epoch": 0})
    assert (r.epoch, r.best_metric_last, r.epoch_best, r.original_candle) == (0, None, None,
                                                                              True)


@pytest.mark.parametrize("epoch", [-1, 1.0, "4", None, True])
def test_read_record_refuses_a_bad_epoch(epoch):
    with pytest.raises(ValueError, match="epoch"):
        read_record(_info(epoch=epoch))


def test_read_record_takes_a_nan_best_as_none_and_refuses_a_non_number():
    assert read_record(_info(best_metric_last=float("nan"))).best_metric_last is None
    assert read_record(_info(best_metric_last=3)).best_metric_last == 3.0
    with pytest.raises(ValueError, match="best_metric_last"):
        read_record(_info(best_metric_last="low"))


@pytest.mark.parametrize("epoch_best", [-1, 2.0, "2", True, None])
def test_read_record_drops_a_bad_epoch_best(epoch_best):
    assert read_record(_info(epoch_best=epoch_best)).epoch_best is None


def test_read_record_keeps_epoch_best_zero():
    assert read_record(_info(epoch_best=0)).epoch_best == 0


@pytest.mark.parametrize("batch,partial", [(5, True), (1, 1), (0, False), (0, None)])
def test_read_record_accepts_a_consistent_batch(batch, partial):
    info = _info(batch=batch)
    if partial is not None:
        info["partial"] = partial
    assert read_record(info).batch == batch


@pytest.mark.parametrize("batch,partial", [(5, False), (0, True), (5, None)])
def test_read_record_refuses_partial_contradicting_batch(batch, partial):
    info = _info(batch=batch)
    if partial is not None:
        info["partial"] = partial
    with pytest.raises(ValueError, match="partial"):
        read_record(info)


@pytest.mark.parametrize("batch", [-1, 1.5, "3", True])
def test_read_record_refuses_a_bad_batch(batch):
    with pytest.raises(ValueError, match="batch"):
        read_record(_info(batch=batch, partial=True))


def test_read_record_shortens_a_long_bad_value():
    with pytest.raises(ValueError) as err:
        read_record(_info(epoch="x" * 100))
    assert len(str(err.value)) < 80 and "..." in str(err.value)
