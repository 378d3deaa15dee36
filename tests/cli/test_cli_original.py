"""The command line on checkpoints written by the original CANDLE code.

The fixtures are copied to ``tmp_path``; ``last`` and ``best`` are created there as the
original created them: ABSOLUTE symlinks (and, to play a moved tree, dangling ones).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.helpers.cli import FIXTURES, assert_one_line_error, list_json, run_cli, train

METRIC = {"keras": "val_loss", "torch": "loss"}


def copy_fixture(flavour: str, dest: Path) -> Path:
    shutil.copytree(FIXTURES / flavour, dest, copy_function=shutil.copyfile)
    for dirpath, dirs, files in os.walk(dest):
        for name in [*dirs, *files, "."]:
            path = Path(dirpath) / name
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return dest


@pytest.fixture(params=["keras", "torch"])
def original(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """A copy of the fixture with absolute links, as the original wrote them."""
    flavour: str = request.param
    root = copy_fixture(flavour, tmp_path / "run")
    os.symlink(root / "epochs" / "006", root / "last")
    os.symlink(root / "epochs" / "005", root / "best")
    return flavour, root


def test_list_reads_the_original_layout(original: tuple[str, Path]) -> None:
    flavour, root = original
    data = list_json(root)
    assert data["layout"] == "original-candle"
    assert data["last"]["epoch"] == 6 and data["best"]["epoch"] == 5
    rows = {c["epoch"]: c for c in data["checkpoints"]}
    assert sorted(rows) == [2, 3, 5, 6]
    assert rows[6]["metric"] == METRIC[flavour] and rows[6]["metric_value"] is None
    assert rows[6]["best_metric_last"] > 0 and rows[6]["size"] > 10_000
    table = run_cli("list", root).stdout
    assert "original CANDLE layout" in table and METRIC[flavour] in table


def test_show_of_an_original_checkpoint(original: tuple[str, Path]) -> None:
    _, root = original
    proc = run_cli("show", root, "2")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((root / "epochs" / "002" / "ckpt-info.json").read_text())
    assert "model.h5" in proc.stdout and "no manifest" in proc.stdout
    assert f"checksum          {info['checksum']}" in proc.stdout


def test_verify_recomputes_the_legacy_crc32(original: tuple[str, Path]) -> None:
    _, root = original
    ok = run_cli("verify", root)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.count("crc32 checksum") == 4
    bad = root / "epochs" / "003" / "model.h5"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    proc = run_cli("verify", root)
    assert proc.returncode == 1
    assert f"{bad}: checksum" in proc.stdout and "(crc32)" in proc.stdout
    assert_one_line_error(run_cli("rollback", root, "3"), "refusing", str(bad))


def test_a_moved_tree_is_read_through_reanchored_links(tmp_path: Path) -> None:
    root = copy_fixture("keras", tmp_path / "moved")
    os.symlink("/old/place/of/run/epochs/006", root / "last")  # dangling absolute
    data = list_json(root)
    assert data["last"]["epoch"] == 6 and data["last"]["reanchored"]
    assert "re-anchored" in run_cli("list", root).stdout
    assert run_cli("verify", root).returncode == 0


def test_rollback_writes_a_relative_link_and_restart_resumes_there(
        original: tuple[str, Path]) -> None:
    flavour, root = original
    proc = run_cli("rollback", root, "5")
    assert proc.returncode == 0, proc.stderr
    assert "was epochs/006" in proc.stdout
    assert os.readlink(root / "last") == "epochs/005"
    resumed = train(root, 5, "--metric", METRIC[flavour])
    assert resumed["resumed_from"] == 5
    assert Path(resumed["restarted_from"]) == root / "epochs" / "005"


def test_prune_keeps_last_and_best_of_an_original_run(original: tuple[str, Path]) -> None:
    _, root = original
    proc = run_cli("prune", root, "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    assert [c["epoch"] for c in list_json(root)["checkpoints"]] == [5, 6]
    assert "removed 2 checkpoint(s)" in proc.stdout


def test_a_link_escaping_the_tree_is_reported_not_followed(tmp_path: Path) -> None:
    root = copy_fixture("torch", tmp_path / "run")
    elsewhere = copy_fixture("torch", tmp_path / "other")
    os.symlink(elsewhere / "epochs" / "006", root / "last")
    assert "BROKEN" in run_cli("list", root).stdout
    verify = run_cli("verify", root)
    assert verify.returncode == 1 and "escapes the tree" in verify.stdout
    assert_one_line_error(run_cli("show", root, "last"), "escapes the tree")
    assert_one_line_error(run_cli("prune", root, "--keep", "1"), "refusing to prune")
