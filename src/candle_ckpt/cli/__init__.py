"""candle-ckpt: see and steer checkpoint directories without writing Python.

Subcommands: ``list``, ``show``, ``verify``, ``rollback``, ``prune``, ``export``, ``plot``,
``demo``.
Each reads both layouts (ours, ``<dir>/ckpts/{epochs,last,best}``, and the original
CANDLE's, ``<dir>/{epochs,last,best}``). Commands that change the tree (``rollback``,
``prune``) take the writer lock, so they cannot race a training run in the same
directory, and append what they did to ``<dir>/ckpt.log``.

Exit status: 0 success; 1 ``verify`` found a bad checkpoint (or the demo's weights
differ); 2 an error (bad arguments, no such directory or epoch, locked directory, ...),
reported as one line on stderr, never a traceback.

Modules, each importing only modules below it in this list (so there is no cycle;
``tests/cli/test_cli_layout.py`` checks it)::

    parser        build_parser(), main(): dispatch, exit status, the error line
    demo          demo: the parent that spawns, kills and compares the runs
    changes       rollback, prune            (take the writer lock)
    export        export                     (the framework, imported when run)
    plot          plot                       (matplotlib, imported when run)
    verify        verify; check_epoch()/is_valid() shared with rollback and prune
    listing       list, show                 (read-only)
    demo_trainer  the demo's child training run (python -m candle_ckpt.cli.demo_trainer)
    common        opening a directory, epoch arguments, tables, the log, printable()
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


# Imported on call, not here: ``python -m candle_ckpt.cli.demo_trainer`` (the demo's
# child) imports this package first, and must neither pay for the commands nor find
# itself already imported (runpy warns about that on stderr, i.e. into the run's log).
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``candle-ckpt`` command line; returns the exit status."""
    from .parser import main as run

    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``candle-ckpt`` argument parser."""
    from .parser import build_parser as build

    return build()
