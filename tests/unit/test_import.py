"""`import candle_ckpt` must not pull in a deep-learning framework."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ("tensorflow", "keras", "torch")

PROBE = """
import json, sys
import candle_ckpt
import candle_ckpt.testing, candle_ckpt.params, candle_ckpt.policy, candle_ckpt.storage.layout
import candle_ckpt.storage.commit, candle_ckpt.storage.integrity, candle_ckpt.engine
candle_ckpt.CandleCkpt, candle_ckpt.ckpt_parser, candle_ckpt.checksum_file
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {frameworks!r})
print(json.dumps(loaded))
"""


def test_import_candle_ckpt_loads_no_framework():
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(frameworks=set(FRAMEWORKS))],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_probe_detects_a_framework_when_one_is_imported():
    # Guard against a probe that can never fail: a stand-in module named like a framework
    # is reported.
    code = "import sys, types; sys.modules['torch'] = types.ModuleType('torch')\n" + \
        PROBE.format(frameworks=set(FRAMEWORKS))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["torch"]
