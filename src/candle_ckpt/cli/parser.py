"""The ``candle-ckpt`` argument parser and ``main``: dispatch, exit status, error lines."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import CkptError, CkptParamError
from ..params import parse_bytes
from ..storage.safeio import printable
from .changes import cmd_prune, cmd_rollback
from .common import (
    EXIT_ERROR,
    EXIT_FAILED,
    PROG,
    CliError,
)
from .demo import cmd_demo
from .export import cmd_export
from .listing import cmd_list, cmd_show
from .plot import cmd_plot
from .verify import cmd_verify

_DIR_HELP = ("a run's ckpt_directory (either layout), its ckpts/ subdirectory, or the "
             "directory of 'candle-ckpt demo'")
_EXIT_TEXT = "Exit status: 0 ok, 1 verification failed, 2 error (one line on stderr)."


def _size(text: str) -> int:
    try:
        size = parse_bytes("--keep-bytes", text)
    except CkptParamError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if size is None:
        raise argparse.ArgumentTypeError("--keep-bytes: give a size; leave it out for none")
    return size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="See and steer candle-ckpt (and original CANDLE) checkpoint directories.",
        epilog=_EXIT_TEXT,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description, epilog=_EXIT_TEXT)

    p = command("list", "one row per checkpoint: metric, last/best, size, time",
                "List every checkpoint of a directory: its epoch, the best metric's value, "
                "the last/best markers, size on disk, when it was saved and whether it is "
                "complete.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = command("show", "a checkpoint's metadata",
                "Print a checkpoint's ckpt-info.json (the engine's record) and its files.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("epoch", metavar="EPOCH", nargs="?", default="last",
                   help="an epoch number, 'last' (default) or 'best'")
    p.add_argument("--json", action="store_true", help="print ckpt-info.json as is")
    p.set_defaults(func=cmd_show)

    p = command("verify", "recompute sizes and checksums; exit 1 if any fails",
                "Recompute every file's size and, where recorded, checksum against the "
                "checkpoint's manifest (original CANDLE checkpoints: the CRC32 of "
                "model.h5). Without EPOCH: every checkpoint and the last/best links.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("epochs", metavar="EPOCH", nargs="*",
                   help="epoch numbers, 'last' or 'best' (default: every checkpoint, and "
                        "last/best)")
    p.set_defaults(func=cmd_verify)

    p = command("rollback", "point 'last' at EPOCH; the next restart resumes there",
                "Point 'last' at EPOCH (atomically, as training does); the next restart "
                "resumes after it and training re-does the later epochs. Refuses an epoch "
                "that fails verification, and a directory a running training holds.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("epoch", metavar="EPOCH", help="an epoch number, or 'best'")
    p.set_defaults(func=cmd_rollback)

    p = command("prune", "delete old checkpoints by the keep policy",
                "Delete old checkpoints by the training keep policy. Never deleted: the "
                "targets of last and best, the checkpoint a restart would load now, the "
                "newest valid one, and checkpoints that fail verification or are "
                "incomplete (left for you to look at). Every checkpoint is verified first, "
                "checksums included, so this reads every file once.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("--keep", type=_positive_int, metavar="N",
                   help="how many valid checkpoints to keep (the protected ones are kept "
                        "in any case)")
    p.add_argument("--keep-bytes", type=_size, metavar="SIZE",
                   help="then delete the oldest unprotected kept ones until the kept ones "
                        "fit in SIZE, as ckpt_keep_bytes ('50G', '800M', '2TB', bytes)")
    p.add_argument("--mode", choices=("linear", "exponential"), default="linear",
                   help="keep policy, as ckpt_keep_mode (default: linear)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed")
    p.set_defaults(func=cmd_prune)

    p = command("export", "write a checkpoint as one plain file (torch.load / load_weights)",
                "Write the checkpoint of EPOCH as one file the framework loads without "
                "candle-ckpt: torch checkpoints with torch.save (read it with "
                "torch.load(OUT, weights_only=True)), Keras ones as a .weights.h5 (read it "
                "with model.load_weights(OUT)). Shared objects (ckpt_dedup) are read into "
                "it. The checkpoint is verified first, checksums included; OUT must not "
                "exist.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("epoch", metavar="EPOCH", help="an epoch number, 'last' or 'best'")
    p.add_argument("output", metavar="OUT", help="the file to write (Keras: *.weights.h5)")
    p.set_defaults(func=cmd_export)

    p = command("plot", "the best metric per saved epoch, best marked (PNG)",
                "Plot the best metric of every saved epoch, the best marked with a star and "
                "last with a dashed line. Needs matplotlib.")
    p.add_argument("directory", metavar="DIR", help=_DIR_HELP)
    p.add_argument("-o", "--output", required=True, metavar="FILE.png",
                   help="the PNG file to write")
    p.set_defaults(func=cmd_plot)

    p = command("demo", "train, SIGKILL, restart, finish; compare with a straight run",
                "Train a small model with checkpointing in a child process, SIGKILL it "
                "after epoch 3 is committed (like a pre-empted job), restart it, let it "
                "finish, and compare its final weights bit for bit with an uninterrupted "
                "run's. Exit 1 if they differ.")
    p.add_argument("--framework", choices=("torch", "keras"), default="torch",
                   help="the backend to train with (default: torch)")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="where to put the runs: a new or empty directory, or a previous "
                        "demo's (default: a new temporary directory)")
    p.add_argument("--epochs", type=_positive_int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--kill-after", type=_positive_int, default=3, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    _escape_unencodable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, CkptError) as err:
        _error(str(err))
    except BrokenPipeError:  # e.g. `candle-ckpt list DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _error(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:
        # Whatever a tree holds, the user gets one line, not a traceback. Reaching this
        # is a bug of ours: say so, with what is needed to report it.
        _error(f"unexpected {type(err).__name__}: {err} (a bug in {PROG}; please report "
               "it with this line)")
    return EXIT_ERROR


def _escape_unencodable_output() -> None:
    # Non-UTF-8 file names (surrogate escapes) and lone surrogates from a ckpt-info.json
    # must print as escapes, not end the command with UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass  # a closed or unusual stream: printing will tell


def _error(message: str) -> None:
    line = printable(" ".join(message.split()))  # one line, whatever the message held
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(f"{PROG}: error: {line}", file=sys.stderr)
