"""The bad-input table: each bad parameter or call raises an error that names the
parameter, the value and what is accepted, and nothing on disk changes."""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import candle_ckpt
from candle_ckpt.testing import CandleCkptFiles


def _tree(root: Path) -> dict[str, str]:
    """Every entry under root with its content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file() and name == "ckpt.lock":
                # It names the holder and the second it took the lock: any engine that
                # opens the directory rewrites it. What must not change is that it is
                # there, a regular file, and the checkpoints beside it.
                out[rel] = "lock file"
            elif p.is_file() and name != "ckpt.log":
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[rel] = "dir"
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A directory holding two committed checkpoints."""
    d = tmp_path / "run"
    ckpt = CandleCkptFiles({"epochs": 5, "ckpt_directory": str(d),
                            "ckpt_save_best_metric": "loss"}, logger=None)
    for e in range(2):
        ckpt.set_model({"model.bin": bytes([e]) * 100})
        ckpt.ckpt_epoch(e, "-", 1.0 - e / 10)
    ckpt.close()
    return d


def _g(d: Path, **kv: Any) -> dict[str, Any]:
    g: dict[str, Any] = {"epochs": 5, "ckpt_directory": str(d), "ckpt_save_best_metric": "loss"}
    g.update(kv)
    return g


def _construct(**kv: Any) -> Callable[[Path], Any]:
    def make(d: Path) -> Any:
        return CandleCkptFiles(_g(d, **kv), logger=None)
    return make


def _call(method: str, *args: Any) -> Callable[[Path], Any]:
    def make(d: Path) -> Any:
        ckpt = CandleCkptFiles(_g(d), logger=None)
        try:
            return getattr(ckpt, method)(*args)
        finally:
            ckpt.close()
    return make


def _no_epochs(d: Path) -> Any:
    return CandleCkptFiles({"ckpt_directory": str(d)}, logger=None)


def _namespace(d: Path) -> Any:
    return CandleCkptFiles(argparse.Namespace(epochs=5, ckpt_directory=str(d),
                                              ckpt_keep_limit="-3"), logger=None)


def _bad_gparams(d: Path) -> Any:
    return CandleCkptFiles([("epochs", 5)], logger=None)


def _bad_logger(d: Path) -> Any:
    return CandleCkptFiles(_g(d), logger="verbose")


def _param_fn(d: Path) -> Any:
    return candle_ckpt.param({"x": "abc"}, "x", 0, candle_ckpt.ParamType.INTEGER)


def _param_allowed_fn(d: Path) -> Any:
    return candle_ckpt.param_allowed("mode", "fast", ["off", "auto"])


def _param_required_fn(d: Path) -> Any:
    return candle_ckpt.param({}, "epochs", candle_ckpt.ParamRequired())


# (id, action, error class, substrings the message must contain)
CASES: list[tuple[str, Callable[[Path], Any], type[Exception], list[str]]] = [
    ("restart_mode unknown", _construct(ckpt_restart_mode="sometimes"),
     candle_ckpt.CkptParamError, ["ckpt_restart_mode", "sometimes", "'required'"]),
    ("restart_mode wrong type", _construct(ckpt_restart_mode=3),
     candle_ckpt.CkptParamError, ["ckpt_restart_mode", "3", "string"]),
    ("save_best not a bool", _construct(ckpt_save_best="maybe"),
     candle_ckpt.CkptParamError, ["ckpt_save_best", "maybe", "true/false"]),
    ("save_best int 2", _construct(ckpt_save_best=2),
     candle_ckpt.CkptParamError, ["ckpt_save_best", "2", "true/false"]),
    ("save_best_metric empty", _construct(ckpt_save_best_metric=""),
     candle_ckpt.CkptParamError, ["ckpt_save_best_metric", "''", "required"]),
    ("save_best_metric not a string", _construct(ckpt_save_best_metric=5),
     candle_ckpt.CkptParamError, ["ckpt_save_best_metric", "5", "string"]),
    ("save_best_mode unknown", _construct(ckpt_save_best_mode="up"),
     candle_ckpt.CkptParamError, ["ckpt_save_best_mode", "up", "'max'"]),
    ("skip_epochs negative", _construct(ckpt_skip_epochs=-1),
     candle_ckpt.CkptParamError, ["ckpt_skip_epochs", "-1", ">= 0"]),
    ("skip_epochs text", _construct(ckpt_skip_epochs="two"),
     candle_ckpt.CkptParamError, ["ckpt_skip_epochs", "two", "integer"]),
    ("save_interval negative", _construct(ckpt_save_interval=-5),
     candle_ckpt.CkptParamError, ["ckpt_save_interval", "-5", ">= 0"]),
    ("save_interval float", _construct(ckpt_save_interval=1.5),
     candle_ckpt.CkptParamError, ["ckpt_save_interval", "1.5", "integer"]),
    ("checksum not a bool", _construct(ckpt_checksum="sha"),
     candle_ckpt.CkptParamError, ["ckpt_checksum", "sha", "true/false"]),
    ("keep_mode unknown", _construct(ckpt_keep_mode="fibonacci"),
     candle_ckpt.CkptParamError, ["ckpt_keep_mode", "fibonacci", "'exponential'"]),
    ("keep_limit zero", _construct(ckpt_keep_limit=0),
     candle_ckpt.CkptParamError, ["ckpt_keep_limit", "0", "> 0"]),
    ("keep_limit negative string", _construct(ckpt_keep_limit="-2"),
     candle_ckpt.CkptParamError, ["ckpt_keep_limit", "-2", "> 0"]),
    ("keep_limit bool", _construct(ckpt_keep_limit=True),
     candle_ckpt.CkptParamError, ["ckpt_keep_limit", "True", "integer"]),
    ("directory empty", _construct(ckpt_directory=" "),
     candle_ckpt.CkptParamError, ["ckpt_directory", "empty"]),
    ("directory not a string", _construct(ckpt_directory=42),
     candle_ckpt.CkptParamError, ["ckpt_directory", "42", "string"]),
    ("metadata not a string", _construct(ckpt_metadata={"job": 1}),
     candle_ckpt.CkptParamError, ["ckpt_metadata", "job", "string"]),
    ("weights_only not a bool", _construct(ckpt_save_weights_only="weights"),
     candle_ckpt.CkptParamError, ["ckpt_save_weights_only", "weights", "true/false"]),
    ("best_metric_last text", _construct(ckpt_best_metric_last="low"),
     candle_ckpt.CkptParamError, ["ckpt_best_metric_last", "low", "number"]),
    ("best_metric_last nan", _construct(ckpt_best_metric_last=float("nan")),
     candle_ckpt.CkptParamError, ["ckpt_best_metric_last", "nan", "number"]),
    ("async not a bool", _construct(ckpt_async="later"),
     candle_ckpt.CkptParamError, ["ckpt_async", "later", "true/false"]),
    ("epochs negative", _construct(epochs=-3),
     candle_ckpt.CkptParamError, ["epochs", "-3", ">= 0"]),
    ("epochs text", _construct(epochs="ten"),
     candle_ckpt.CkptParamError, ["epochs", "ten", "integer"]),
    ("epochs missing", _no_epochs,
     candle_ckpt.CkptParamError, ["epochs", "required"]),
    ("namespace keep_limit", _namespace,
     candle_ckpt.CkptParamError, ["ckpt_keep_limit", "-3", "> 0"]),
    ("gParameters a list", _bad_gparams,
     candle_ckpt.CkptParamError, ["gParameters", "list", "dict"]),
    ("logger unknown", _bad_logger,
     candle_ckpt.CkptParamError, ["logger", "verbose", "DEFAULT"]),
    ("direction unknown", _call("ckpt_epoch", 2, "up", 0.1),
     candle_ckpt.CkptParamError, ["direction", "up", "'+'"]),
    ("metric not a number", _call("ckpt_epoch", 2, "-", "low"),
     candle_ckpt.CkptParamError, ["metric_value", "low", "number"]),
    ("param() conversion", _param_fn,
     candle_ckpt.CkptParamTypeError, ["'x'", "abc", "integer"]),
    ("param_allowed()", _param_allowed_fn,
     candle_ckpt.CkptParamError, ["mode", "fast", "'auto'"]),
    ("param() required", _param_required_fn,
     candle_ckpt.CkptParamError, ["epochs", "required"]),
]


@pytest.mark.parametrize("action,error,words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error_and_changes_nothing(
    run_dir: Path, action: Callable[[Path], Any], error: type[Exception], words: list[str]
) -> None:
    before = _tree(run_dir)
    with pytest.raises(error) as info:
        action(run_dir)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
    assert _tree(run_dir) == before


def test_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "save"
    f.write_text("not a directory")
    with pytest.raises(candle_ckpt.CkptParamError, match="ckpt_directory.*is a file"):
        CandleCkptFiles(_g(f), logger=None)
    assert f.read_text() == "not a directory"


def test_directory_not_writable_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permissions: use a read-only filesystem
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("root, and no read-only filesystem can be mounted here")
        mounted = True
    else:
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(candle_ckpt.CkptParamError, match="ckpt_directory.*not writable"):
            CandleCkptFiles(_g(ro / "save"), logger=None)
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(stat.S_IRWXU)


def test_bad_parameter_creates_no_directory(tmp_path: Path) -> None:
    with pytest.raises(candle_ckpt.CkptParamError):
        CandleCkptFiles(_g(tmp_path / "new", ckpt_keep_mode="none"), logger=None)
    assert not (tmp_path / "new").exists()
