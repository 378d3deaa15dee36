"""The corruption catalogue: each damage, with and without ckpt_checksum, has the
documented outcome (README "Reliability"). Three checkpoints are written (last -> 003),
the damage is applied, then a fresh engine restarts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import candle_ckpt
from candle_ckpt.testing import CandleCkptFiles

EPOCHS = 3


def _state(epoch: int) -> dict[str, bytes]:
    return {"model.bin": bytes([epoch]) * 4096, "opt.bin": bytes([100 + epoch]) * 512}


def _engine(directory: Path, checksum: bool, mode: str = "auto") -> CandleCkptFiles:
    g = {"epochs": 10, "ckpt_directory": str(directory), "ckpt_save_best_metric": "loss",
         "ckpt_checksum": checksum, "ckpt_restart_mode": mode}
    return CandleCkptFiles(g, logger=None)


def _written(directory: Path, checksum: bool) -> Path:
    ckpt = _engine(directory, checksum)
    for e in range(EPOCHS):
        ckpt.set_model(_state(e + 1))
        ckpt.ckpt_epoch(e, "-", 1.0 / (e + 1))
    ckpt.close()
    return directory / "ckpts"


def flip_byte(c: Path) -> None:
    f = c / "epochs/003/model.bin"
    data = bytearray(f.read_bytes())
    data[100] ^= 0x01
    f.write_bytes(bytes(data))


def truncate(c: Path) -> None:
    f = c / "epochs/003/model.bin"
    f.write_bytes(f.read_bytes()[:1000])


def zero_length(c: Path) -> None:
    (c / "epochs/003/opt.bin").write_bytes(b"")


def missing_model(c: Path) -> None:
    (c / "epochs/003/model.bin").unlink()


def missing_info(c: Path) -> None:
    (c / "epochs/003/ckpt-info.json").unlink()


def unparsable_info(c: Path) -> None:
    (c / "epochs/003/ckpt-info.json").write_text('{"epoch": 3, "files": {')


def wrong_epoch_info(c: Path) -> None:
    f = c / "epochs/003/ckpt-info.json"
    info = json.loads(f.read_text())
    info["epoch"] = 7
    f.write_text(json.dumps(info))


def dangling_last(c: Path) -> None:
    shutil.rmtree(c / "epochs/003")
    shutil.rmtree(c / "epochs/002")
    shutil.rmtree(c / "epochs/001")


def last_outside_tree(c: Path) -> None:
    outside = c.parent.parent / "elsewhere" / "epochs" / "003"
    shutil.copytree(c / "epochs/003", outside)
    (c / "last").unlink()
    os.symlink(outside, c / "last")


def last_plain_directory(c: Path) -> None:
    (c / "last").unlink()
    shutil.copytree(c / "epochs/003", c / "last")


def stale_work(c: Path) -> None:
    (c / "work").mkdir()
    (c / "work/model.bin").write_bytes(b"half written")


def extra_files(c: Path) -> None:
    (c / "epochs/003/notes.txt").write_text("a user's notes")


Damage = Callable[[Path], None]

# (damage, outcome without checksum, outcome with checksum). Outcomes:
#   "fallback"  restart resumes from epoch 2 and reports epoch 3 in "skipped"
#   "loads"     restart resumes from epoch 3
#   "garbage"   resumes from epoch 3 with the damaged bytes: undetectable without checksums
#   "scratch"   no checkpoint: None under "auto", CheckpointNotFoundError under "required"
#   "refused"   CheckpointCorruptError, nothing loaded
CATALOGUE: list[tuple[Damage, str, str]] = [
    (flip_byte, "garbage", "fallback"),
    (truncate, "fallback", "fallback"),
    (zero_length, "fallback", "fallback"),
    (missing_model, "fallback", "fallback"),
    (missing_info, "fallback", "fallback"),
    (unparsable_info, "fallback", "fallback"),
    (wrong_epoch_info, "fallback", "fallback"),
    (dangling_last, "scratch", "scratch"),
    (last_outside_tree, "refused", "refused"),
    (last_plain_directory, "refused", "refused"),
    (stale_work, "loads", "loads"),
    (extra_files, "loads", "loads"),
]


@pytest.mark.parametrize("checksum", [False, True], ids=["no-checksum", "checksum"])
@pytest.mark.parametrize(
    "damage,plain,checked", CATALOGUE, ids=[c[0].__name__ for c in CATALOGUE]
)
def test_damage_has_the_documented_outcome(
    tmp_path: Path, damage: Damage, plain: str, checked: str, checksum: bool
) -> None:
    c = _written(tmp_path / "run", checksum)
    damage(c)
    outcome = checked if checksum else plain
    ckpt = _engine(tmp_path / "run", checksum)
    if outcome == "refused":
        with pytest.raises(candle_ckpt.CheckpointCorruptError, match="rollback"):
            ckpt.restart(None)
        return
    J = ckpt.restart(None)
    if outcome == "scratch":
        assert J is None
        ckpt.close()
        required = _engine(tmp_path / "run", checksum, mode="required")
        with pytest.raises(candle_ckpt.CheckpointNotFoundError):
            required.restart(None)
        return
    assert J is not None
    if outcome == "fallback":
        assert J["epoch"] == 2 and ckpt.state == _state(2)
        assert [s["epoch"] for s in J["skipped"]] == [3]
        assert J["restarted_from"].endswith("epochs/002")
    elif outcome == "loads":
        assert J["epoch"] == 3 and ckpt.state == _state(3) and J["skipped"] == []
    else:  # garbage: documented limitation without ckpt_checksum
        assert J["epoch"] == 3 and ckpt.state != _state(3)


def test_stale_work_is_removed_by_the_next_writer_and_never_read(tmp_path: Path) -> None:
    c = _written(tmp_path / "run", checksum=False)
    stale_work(c)
    ckpt = _engine(tmp_path / "run", checksum=False)
    assert not (c / "work").exists()
    assert ckpt.restart(None) is not None
