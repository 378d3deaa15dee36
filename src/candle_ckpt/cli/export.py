"""``export``: a checkpoint as one plain file the framework loads on its own."""

from __future__ import annotations

import argparse

from ..errors import CkptError
from ..loading import export
from ..storage.safeio import printable
from ..storage.usage import human_size
from .common import EXIT_OK, CliError, open_directory, resolve_epoch


def cmd_export(args: argparse.Namespace) -> int:
    layout = open_directory(args.directory)
    epoch = resolve_epoch(layout, args.epoch)
    try:
        out = export(layout.root, args.output, epoch)
    except (CkptError, OSError) as err:
        raise CliError(printable(err)) from None
    print(f"exported epoch {epoch} to {printable(out)} ({human_size(out.stat().st_size)})")
    return EXIT_OK
