"""The command line on ``ckpt_dedup`` trees: verify checks the shared objects, prune
removes those no remaining checkpoint references (and says what a dry run would)."""

from __future__ import annotations

import json
from pathlib import Path

from candle_ckpt.storage.layout import Layout
from candle_ckpt.storage.objects import referenced, sizes
from candle_ckpt.testing import CandleCkptFiles
from tests.helpers.cli import run_cli
from tests.helpers.fs import make_params


def state(epoch: int) -> dict[str, bytes]:
    return {"model.bin": b"frozen" * 700, "extra.bin": bytes([epoch]) * (600 + epoch)}


def write(directory: Path, epochs: int = 5) -> None:
    e = CandleCkptFiles(make_params(directory, ckpt_dedup=True, ckpt_keep_mode="all",
                                    ckpt_checksum=True), logger=None)
    try:
        for epoch in range(1, epochs + 1):
            e.set_model(state(epoch))
            assert e.ckpt_epoch(epoch - 1, "-", 1.0 / epoch)
    finally:
        e.close()


def objects_of(directory: Path, epoch: int) -> set[str]:
    info = json.loads((directory / "ckpts" / "epochs" / f"{epoch:03d}" / "ckpt-info.json")
                      .read_text())
    return set(info["objects"])


def test_verify_checks_the_shared_objects_of_every_checkpoint(tmp_path):
    write(tmp_path)
    assert "ckpt_dedup: tensors/variables" in (tmp_path / "ckpt.log").read_text()
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("2 shared object(s)") == 5
    frozen = set.intersection(*(objects_of(tmp_path, e) for e in range(1, 6)))
    (name,) = frozen
    path = tmp_path / "ckpts" / "objects" / name[:2] / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("FAILED") for line in lines) == 5, proc.stdout
    assert sum(f"object {name}: content hashes to" in line for line in lines) == 5


def test_prune_removes_the_objects_no_remaining_checkpoint_references(tmp_path):
    write(tmp_path)
    layout = Layout.ours(tmp_path)
    before = sizes(layout)
    doomed_own = (objects_of(tmp_path, 1) | objects_of(tmp_path, 2)
                  | objects_of(tmp_path, 3)) - objects_of(tmp_path, 4) - objects_of(tmp_path, 5)
    assert len(doomed_own) == 3
    dry = run_cli("prune", tmp_path, "--keep", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 3 shared object(s)" in dry.stdout
    assert sizes(layout) == before
    proc = run_cli("prune", tmp_path, "--keep", "2")
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 shared object(s)" in proc.stdout
    assert set(sizes(layout)) == referenced(layout) == before.keys() - doomed_own
    e = CandleCkptFiles(make_params(tmp_path, ckpt_dedup=True, ckpt_checksum=True),
                        logger=None)
    try:
        J = e.restart()
        assert J is not None and J["epoch"] == 5 and e.state == state(5)
    finally:
        e.close()


def test_export_refuses_a_backend_without_a_plain_file_in_one_line(tmp_path):
    write(tmp_path, 1)
    proc = run_cli("export", tmp_path, "1", tmp_path / "out.bin")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "backend 'files' has no plain file format" in proc.stderr
    assert not (tmp_path / "out.bin").exists()
