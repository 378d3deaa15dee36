"""What the engine tells the user about its run: once, and naming the right parameter."""

from __future__ import annotations

import re

import pytest

from candle_ckpt import CkptParamError
from candle_ckpt.testing import CandleCkptFiles
from tests.helpers.fs import blobs, engine


def test_a_bad_root_from_output_dir_names_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CkptParamError, match="'output_dir'"):
        CandleCkptFiles({"epochs": 2, "output_dir": str(blocker)}, logger=None)
    with pytest.raises(CkptParamError, match="'ckpt_directory'"):
        CandleCkptFiles({"epochs": 2, "ckpt_directory": str(blocker)}, logger=None)


def test_the_start_report_names_the_root_and_why_once(tmp_path, capsys):
    e = CandleCkptFiles({"epochs": 2, "output_dir": str(tmp_path)})
    e.close()
    out = capsys.readouterr().out
    assert out.count("checkpointing into") == 1
    assert "output_dir (ckpt_directory is not set)" in out


def test_a_bad_signal_name_writes_nothing(tmp_path):
    root = tmp_path / "run"
    with pytest.raises(CkptParamError, match="ckpt_signals"):
        CandleCkptFiles({"epochs": 2, "ckpt_directory": str(root), "ckpt_signals": "SIGFOO"},
                        logger=None)
    assert not root.exists()


def test_a_misspelt_ckpt_key_is_warned_about_on_the_console_and_in_the_log(tmp_path, capsys):
    params = {"epochs": 2, "ckpt_directory": str(tmp_path), "ckpt_keep_limt": 1}
    CandleCkptFiles(params, verbose=False).close()
    out = capsys.readouterr().out
    assert out.count("'ckpt_keep_limt'") == 1 and "did you mean 'ckpt_keep_limit'?" in out
    log = (tmp_path / "ckpt.log").read_text()
    assert "WARNING" in log and "did you mean 'ckpt_keep_limit'?" in log
    CandleCkptFiles({"epochs": 2, "ckpt_directory": str(tmp_path)}, verbose=False).close()
    assert "did you mean" not in capsys.readouterr().out


def test_the_final_reports_time_saving_is_the_sum_over_every_save(tmp_path):
    with engine(tmp_path, ckpt_checksum=True) as e:
        for epoch in range(1, 5):  # files large enough that each save takes some time
            e.set_model(blobs(epoch, sizes=(4 << 20, 517)))
            assert e.ckpt_epoch(epoch - 1, "-", 1.0 / epoch)
        e.report_final()
    log = (tmp_path / "ckpt.log").read_text()
    each = [float(s) for s in re.findall(r"epoch \d: saved \S+ in ([0-9.]+)s", log)]
    reported = re.findall(r"checkpoints written this run: 4 .*; time saving ([0-9.]+)s", log)
    assert len(each) == 4 and len(reported) == 1
    # Every figure is rounded to the millisecond: the sum is exact to within that.
    assert float(reported[0]) == pytest.approx(sum(each), abs=0.0005 * (len(each) + 1))
    assert sum(each[:-1]) > 0.003  # so the earlier saves count: the last alone is not it
