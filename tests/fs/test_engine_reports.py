"""What the engine tells the user about its run: once, and naming the right parameter."""

from __future__ import annotations

import pytest

from candle_ckpt import CkptParamError
from candle_ckpt.testing import CandleCkptFiles


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
