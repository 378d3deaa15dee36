"""benchmarks/bench_ckpt.py still runs and prints every row (a tiny model, one round).

Nothing here is timed or compared: speed is the benchmark's business, run on demand.
This only keeps the benchmark from rotting as the code it measures changes.
"""

from __future__ import annotations

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
                "candle-ckpt restart (checksum verified)",
                "peak RSS growth of a candle-ckpt restart"):
        assert row in names, (row, out.stdout)
    assert not [r for r in rows if " nan" in r]  # every row has its baseline's ratio
