"""Checkpoints written by the original CANDLE code are recognised by restart's validation.

The fixtures are copied, and ``last``/``best`` created as ABSOLUTE symlinks as the original
did (or dangling, as after the user moved the tree). The files backend loads raw bytes,
so no framework is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import pytest

from candle_ckpt.storage.layout import Layout
from candle_ckpt.testing import CandleCkptFiles

# Checkpoints written by the original CANDLE code, in ../shared beside the repository.
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "original-candle"
if not FIXTURES.is_dir():  # a clone somewhere other than beside shared/
    FIXTURES = Path("/work/shared/fixtures/original-candle")
FLAVOURS = ["keras", "torch"]


def copy_fixture(flavour: str, dest: Path, links: str = "absolute") -> Path:
    """A writable copy of a fixture with last/best -> <copy>/epochs/006."""
    shutil.copytree(FIXTURES / flavour, dest, copy_function=shutil.copyfile)
    for root, dirs, _ in os.walk(dest):
        for d in [root, *(os.path.join(root, x) for x in dirs)]:
            os.chmod(d, 0o755)
    if links == "absolute":
        target = dest / "epochs" / "006"
    else:  # the original's links after the tree was moved from where it was written
        target = dest.parent / "moved-away" / dest.name / "epochs" / "006"
    for name in ("last", "best"):
        os.symlink(target, dest / name)
    return dest


def files_engine(directory: Path, **overrides) -> CandleCkptFiles:
    params = {"epochs": 10, "ckpt_directory": str(directory), "ckpt_checksum": True}
    params.update(overrides)
    return CandleCkptFiles(params, logger=None)


def original_info(flavour: str, epoch: int) -> dict:
    return json.loads((FIXTURES / flavour / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text(encoding="utf-8"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fixture_checksums_are_decimal_crc32_of_model_h5(flavour):
    for epoch in (2, 3, 5, 6):
        d = FIXTURES / flavour / "epochs" / f"{epoch:03d}"
        J = original_info(flavour, epoch)
        assert J["checksum"] == str(zlib.crc32((d / "model.h5").read_bytes()))
        assert "files" not in J and "checksum_algorithm" not in J


@pytest.mark.parametrize("links", ["absolute", "dangling"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_original_layout_is_detected_and_restarted_from(tmp_path, flavour, links):
    run = copy_fixture(flavour, tmp_path / "run", links)
    layout = Layout.for_restart(run)
    assert layout is not None and layout.original and layout.base == run
    assert layout.complete_epochs() == [2, 3, 5, 6]
    with files_engine(run) as e:
        J = e.restart()
        assert J is not None
        assert J["epoch"] == 6 and J["skipped"] == []
        assert Path(J["restarted_from"]) == run / "epochs" / "006"
        assert J["checksum"] == original_info(flavour, 6)["checksum"]
        expected = (FIXTURES / flavour / "epochs" / "006" / "model.h5").read_bytes()
        assert e.state == {"model.h5": expected}
        assert e.best_metric_last == original_info(flavour, 6)["best_metric_last"]
        assert e.epoch_best == 6
    log = (run / "ckpt.log").read_text(encoding="utf-8")
    assert log.count("re-anchored") == (1 if links == "dangling" else 0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_new_engine_reads_the_original_best_without_restart(tmp_path, flavour):
    run = copy_fixture(flavour, tmp_path / "run")
    with files_engine(run) as e:
        assert e.best_metric_last == original_info(flavour, 6)["best_metric_last"]
        assert e.epoch_best == 6


@pytest.mark.parametrize("links", ["absolute", "dangling"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_flipped_byte_fails_crc32_and_falls_back_to_005(tmp_path, flavour, links):
    run = copy_fixture(flavour, tmp_path / "run", links)
    model = run / "epochs" / "006" / "model.h5"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with files_engine(run) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 5
    assert Path(J["restarted_from"]) == run / "epochs" / "005"
    assert [s["epoch"] for s in J["skipped"]] == [6]
    assert "checksum" in J["skipped"][0]["reason"]
    assert e.state == {"model.h5": (FIXTURES / flavour / "epochs" / "005" / "model.h5")
                       .read_bytes()}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_flipped_byte_is_loaded_when_checksums_are_off(tmp_path, flavour):
    run = copy_fixture(flavour, tmp_path / "run")
    model = run / "epochs" / "006" / "model.h5"
    data = bytearray(model.read_bytes())
    data[100] ^= 0x01
    model.write_bytes(bytes(data))
    with files_engine(run, ckpt_checksum=False) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 6


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_empty_or_missing_original_model_falls_back(tmp_path, flavour):
    run = copy_fixture(flavour, tmp_path / "run")
    (run / "epochs" / "006" / "model.h5").write_bytes(b"")
    (run / "epochs" / "005" / "model.h5").unlink()
    with files_engine(run, ckpt_checksum=False) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 3
    assert [s["epoch"] for s in J["skipped"]] == [6, 5]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_continuing_from_an_original_tree_writes_our_layout_beside_it(tmp_path, flavour):
    run = copy_fixture(flavour, tmp_path / "run")
    with files_engine(run) as e:
        assert e.restart() is not None
        e.set_model({"model.h5": b"new weights"})
        assert e.ckpt_epoch(6, "-", 0.01)
    assert os.readlink(run / "ckpts" / "last") == "epochs/007"
    assert sorted(os.listdir(run / "epochs")) == ["002", "003", "005", "006"]
    with files_engine(run) as e:
        J = e.restart()
    assert J is not None and J["epoch"] == 7 and e.state == {"model.h5": b"new weights"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_absolute_last_into_another_existing_tree_is_refused(tmp_path, flavour):
    original = copy_fixture(flavour, tmp_path / "original")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)  # links still point into original/
    with files_engine(copy) as e, pytest.raises(ValueError, match="escapes"):
        e.restart()
