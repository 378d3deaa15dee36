"""What two settings do to the tree, through the public API.

- ``ckpt_save_interval = 0`` saves nothing: no interval, best or final checkpoint.
- ``ckpt_directory`` absent or None: the root is ``output_dir`` when given (candle_lib's
  ``output_dir/ckpts/{epochs,last,best}`` are our paths under it), else ``./save``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from candle_ckpt.testing import CandleCkptFiles


def run_epochs(params: dict, losses: list[float]) -> list[int]:
    ckpt = CandleCkptFiles(params, logger=None)
    J = ckpt.restart()
    saved = []
    for epoch in range(J["epoch"] if J else 0, len(losses)):
        ckpt.set_model({"model.bin": bytes([epoch + 1]) * 100})
        if ckpt.ckpt_epoch(epoch, metric_value=losses[epoch]):
            saved.append(epoch + 1)
    ckpt.on_train_end()
    return saved


def test_interval_zero_writes_no_checkpoint_even_for_new_bests(tmp_path: Path) -> None:
    params = {"epochs": 4, "ckpt_directory": str(tmp_path), "ckpt_save_interval": 0,
              "ckpt_save_best": True}
    assert run_epochs(params, [0.9, 0.5, 0.3, 0.1]) == []  # every epoch a new best
    epochs = tmp_path / "ckpts" / "epochs"
    assert not epochs.exists() or os.listdir(epochs) == []
    assert not os.path.lexists(tmp_path / "ckpts" / "last")
    assert not os.path.lexists(tmp_path / "ckpts" / "best")


@pytest.mark.parametrize("ckpt_directory", ["absent", None])
def test_output_dir_is_the_root_when_ckpt_directory_is_unset(
        tmp_path: Path, ckpt_directory: str | None) -> None:
    out = tmp_path / "out"
    params: dict = {"epochs": 2, "output_dir": str(out)}
    if ckpt_directory != "absent":
        params["ckpt_directory"] = ckpt_directory  # candle_lib's finalize_parameters
    assert run_epochs(params, [0.5, 0.4]) == [1, 2]
    assert os.readlink(out / "ckpts" / "last") == "epochs/002"  # candle_lib's path
    # A later run with the same parameters restarts from there.
    params["epochs"] = 3
    assert run_epochs(params, [0.5, 0.4, 0.3]) == [3]


def test_ckpt_directory_wins_over_output_dir(tmp_path: Path) -> None:
    params = {"epochs": 1, "output_dir": str(tmp_path / "out"),
              "ckpt_directory": str(tmp_path / "ck")}
    assert run_epochs(params, [0.5]) == [1]
    assert (tmp_path / "ck" / "ckpts" / "last").is_symlink()
    assert not (tmp_path / "out").exists()


def test_without_either_the_root_is_save_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_epochs({"epochs": 1}, [0.5]) == [1]
    assert (tmp_path / "save" / "ckpts" / "last").is_symlink()
