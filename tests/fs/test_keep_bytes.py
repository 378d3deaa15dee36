"""ckpt_keep_bytes: the keep policy's byte budget, on real checkpoint trees."""

from __future__ import annotations

from pathlib import Path

from candle_ckpt.storage.usage import dir_size
from tests.helpers.fs import blobs, ckpts, engine, epoch_dirs, train


def _one_checkpoint_bytes(tmp_path: Path) -> int:
    probe = tmp_path / "probe"
    e = engine(probe, ckpt_keep_mode="all")
    train(e, [1])
    e.close()
    return dir_size(ckpts(probe) / "epochs" / "001")


def _log(directory: Path) -> str:
    return (directory / "ckpt.log").read_text(encoding="utf-8")


def test_the_oldest_checkpoints_are_deleted_until_the_run_fits_the_budget(tmp_path):
    one = _one_checkpoint_bytes(tmp_path)
    d = tmp_path / "run"
    # metrics rise: epoch 1 stays the best and is kept whatever the budget says
    e = engine(d, ckpt_keep_mode="all", ckpt_keep_bytes=str(int(3.5 * one)))
    train(e, range(1, 8), metrics={k: float(k) for k in range(1, 8)})
    e.close()
    assert epoch_dirs(ckpts(d)) == ["001", "006", "007"]
    assert sum(dir_size(ckpts(d) / "epochs" / n) for n in epoch_dirs(ckpts(d))) <= 3.5 * one
    log = _log(d)
    assert "ckpt_keep_bytes=" in log and "deleting epoch 2 to fit" in log
    assert "cannot be met" not in log


def test_the_budget_works_with_the_count_limit_and_restart_resumes_from_last(tmp_path):
    one = _one_checkpoint_bytes(tmp_path)
    d = tmp_path / "run"
    e = engine(d, ckpt_keep_limit=4, ckpt_keep_bytes=int(2.5 * one))
    train(e, range(1, 6))  # metric 1/epoch: the newest is always the best
    e.close()
    assert epoch_dirs(ckpts(d)) == ["004", "005"]
    again = engine(d, ckpt_keep_bytes=int(2.5 * one))
    again.set_model(blobs(1))
    assert again.restart()["epoch"] == 5
    again.close()


def test_a_budget_that_last_and_best_exceed_warns_once_and_deletes_only_the_rest(tmp_path):
    d = tmp_path / "run"
    e = engine(d, ckpt_keep_mode="all", ckpt_keep_bytes="1K")
    train(e, range(1, 6), metrics={k: float(k) for k in range(1, 6)})
    e.close()
    assert epoch_dirs(ckpts(d)) == ["001", "005"]  # best, last
    log = _log(d)
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert sum("cannot be met" in line for line in warnings) == 1
    assert "ckpt_keep_bytes=1.0 KiB cannot be met" in log


def test_the_budget_never_deletes_an_earlier_runs_checkpoints(tmp_path):
    one = _one_checkpoint_bytes(tmp_path)
    d = tmp_path / "run"
    first = engine(d, ckpt_keep_mode="all", ckpt_restart_mode="off")
    train(first, range(1, 4), run="a")
    first.close()
    # a new run (restart off) into the same directory, from epoch 1 again, renumbered
    second = engine(d, ckpt_keep_mode="all", ckpt_keep_bytes=int(2.5 * one),
                    ckpt_restart_mode="auto")
    second.set_model(blobs(1))
    assert second.restart()["epoch"] == 3
    train(second, range(4, 9), run="b")
    second.close()
    names = epoch_dirs(ckpts(d))
    assert {"001", "002", "003"} <= set(names)  # the earlier run's, and the resumed one
    assert names == ["001", "002", "003", "007", "008"]


def test_no_budget_line_in_the_log_unless_a_budget_is_set(tmp_path):
    d = tmp_path / "run"
    e = engine(d)
    train(e, [1])
    e.close()
    assert "ckpt_keep_bytes" not in _log(d)
    d2 = tmp_path / "run2"
    e = engine(d2, ckpt_keep_bytes="50G")
    train(e, [1])
    e.close()
    assert "ckpt_keep_bytes=50.0 GiB (53687091200 bytes)" in _log(d2)
