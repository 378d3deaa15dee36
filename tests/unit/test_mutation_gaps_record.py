"""record: the ckpt-info.json schema, field by field (issue 17)."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

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
