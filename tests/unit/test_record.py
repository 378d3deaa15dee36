"""record: SaveRecord -> ckpt-info.json and back, pure (the schema in one place)."""

from __future__ import annotations

import json
import math

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
