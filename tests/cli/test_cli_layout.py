"""The cli/ package's structure: no import cycle, the demo's child apart from its parent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import candle_ckpt.cli

CLI = Path(candle_ckpt.cli.__file__).parent
# The order documented in cli/__init__.py: a module may import only those after it.
ORDER = ["parser", "demo", "changes", "export", "plot", "verify", "listing", "demo_trainer",
         "common"]


def sibling_imports(module: str) -> set[str]:
    tree = ast.parse((CLI / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add((node.module or "").split(".")[0])
    return found


def test_every_module_is_in_the_documented_order() -> None:
    on_disk = {p.stem for p in CLI.glob("*.py")} - {"__init__"}
    assert on_disk == set(ORDER)
    doc = candle_ckpt.cli.__doc__ or ""
    assert [m for m in ORDER if f"    {m} " in doc] == ORDER


def test_modules_import_only_those_below_them_so_there_is_no_cycle() -> None:
    for i, module in enumerate(ORDER):
        assert sibling_imports(module) <= set(ORDER[i + 1:]), module


def test_the_demo_child_imports_nothing_of_the_cli() -> None:
    assert sibling_imports("demo_trainer") == set()
    # Run as the demo runs it: the package import must not pull the commands in (runpy
    # would warn on stderr, into the run's log).
    code = ("import sys, candle_ckpt.cli.demo_trainer; "
            "print(sorted(m for m in sys.modules if m.startswith('candle_ckpt.cli')))")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['candle_ckpt.cli', 'candle_ckpt.cli.demo_trainer']"
