"""benchmarks/bench_ckpt.py still runs and prints every row (a tiny model, one round).

Nothing here is timed or compared: speed is the benchmark's business, run on demand.
This only keeps the benchmark from rotting as the code it measures changes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ckpt.py"


def test_the_torch_benchmark_prints_every_row_with_its_baseline(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH), "--params", "2e5", "--repeats", "1", "--settle", "0",
         "--frameworks", "torch", "--dir", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("torch ")]
    names = " | ".join(rows)
    for row in ("raw write: new file + fsync + unlink old", "2 writers, 2 files",
                "copy of the state into reused host memory", "torch.save + fsync",
                "dcp.save", "dcp.async_save (cached staging): stall",
                "candle-ckpt save (sync, durable)", "candle-ckpt save (checksum on, durable)",
                "candle-ckpt async: stall", "candle-ckpt async: until durable",
                "torch.load + load_state_dict", "candle-ckpt restart (sizes verified)",
                "candle-ckpt restart (checksum verified)", "dcp.load + set_state_dict",
                "file not cached: candle-ckpt restart (checksum verified)",
                "peak RSS growth of a candle-ckpt restart",
                "peak RSS growth of a candle-ckpt checksums restart",
                "peak RSS growth of a dcp.load restart",
                "peak RSS growth of a candle-ckpt, fresh optimizer restart"):
        assert row in names, (row, out.stdout)
    assert not [r for r in rows if " nan" in r]  # every row has its baseline's ratio


def test_the_cached_dcp_stager_survives_being_closed_between_saves(monkeypatch):
    """A DefaultStager staging after close() raises KeyError: <class 'type'> (what torch
    versions that close the stager given to dcp.async_save hit at the second save); the
    benchmark's stager stays usable, so its dcp.async_save row runs."""
    import torch

    staging_module = pytest.importorskip("torch.distributed.checkpoint.staging")
    spec = importlib.util.spec_from_file_location("bench_ckpt", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_ckpt", bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    state = {"w": torch.ones(4), "size": torch.Size([4]), "groups": [{"lr": 0.1}]}
    plain = staging_module.DefaultStager(staging_module.StagingOptions(
        False, False, False, False))
    plain.stage(state)
    plain.close()
    with pytest.raises(KeyError):
        plain.stage(state)  # the failure the benchmark's GPU mode met
    stager, staging = bench._dcp_stager(False, "cpu")
    assert staging == "cached"
    first = stager.stage(state)
    stager.close()  # as dcp.async_save may do after each save
    second = stager.stage(state)
    assert torch.equal(second["w"], state["w"])
    assert second["w"].untyped_storage().data_ptr() == first["w"].untyped_storage().data_ptr()


DEDUP_BENCH = BENCH.with_name("bench_dedup.py")


def test_the_dedup_benchmark_prints_every_ratio(tmp_path):
    (tmp_path / "b").mkdir()
    out = subprocess.run(
        [sys.executable, str(DEDUP_BENCH), "--params", "2e6", "--epochs", "3",
         "--full-epochs", "2", "--repeats", "1", "--dir", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("disk used / (one full + 2 x changing) = ", "sync save time dedup / plain = ",
                 "save time dedup / plain = ", "restart time dedup / plain = "):
        assert line in out.stdout, out.stdout
    assert list((tmp_path / "b").iterdir()) == []  # it cleans up after itself
