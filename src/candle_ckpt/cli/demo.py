"""``candle-ckpt demo``: a training run killed like a pre-empted job, restarted, compared.

The parent process (``run_demo``) starts two child processes that train the same small
model on the same synthetic data with checkpointing:

- run A ("interrupted"): after epoch ``kill_after`` is committed it prints a marker line;
  the parent then sends it SIGKILL, the way a batch system pre-empts a job. The run is
  then started again with the same command: it restarts from ``last`` and finishes.
- run B ("straight"): the same training without interruption.

Both write their final weights' digests; the demo passes when they are bit-identical.

Nothing depends on timing luck: the parent kills only after it has read the marker,
which run A prints after the checkpoint's ``last`` link was committed; and run A, if the
kill has not arrived by the middle of the next epoch, waits there to be killed (it
never finishes on its own), so the kill always lands mid-run.

The child's training script is :mod:`candle_ckpt.cli.demo_trainer`; each run's log
(``interrupted.log``, ``straight.log`` in the demo directory) holds everything its child
printed, stdout and stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from ..storage.layout import Layout
from .common import DEMO_RUN, DEMO_TAG, CliError
from .demo_trainer import FEATURES, HIDDEN, MARKER
from .listing import print_listing, rows_of


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.framework, args.dir, epochs=args.epochs, kill_after=args.kill_after)


def run_demo(framework: str, directory: str | None, epochs: int = 8,
             kill_after: int = 3) -> int:
    """Run the demo; returns 0 when the resumed run's weights equal the straight run's.

    Raises:
        CliError: the framework is not installed, the directory is not usable, or a
            child run failed (with the tail of its log).
    """
    if kill_after >= epochs:
        raise CliError(f"--kill-after {kill_after} must be smaller than --epochs {epochs}")
    module = "torch" if framework == "torch" else "keras"
    if importlib.util.find_spec(module) is None:
        raise CliError(f"the {framework} demo needs {module}, which is not installed: in "
                       f"your clone of candle-ckpt, pip install -e '.[{framework}]' (see "
                       "README, Install)")
    root = _prepare(directory)
    started = time.perf_counter()
    print(f"candle-ckpt demo: {framework}, an MLP {FEATURES}-{HIDDEN}-1 with dropout, "
          f"{epochs} epochs on synthetic data,")
    print(f"checkpoint every epoch (ckpt_checksum=True), in {root}")
    print()
    a_dir, b_dir = root / DEMO_RUN, root / "straight"
    b_log = open(root / "straight.log", "w", encoding="utf-8")  # noqa: SIM115
    try:
        b = _spawn(framework, b_dir, epochs, root / "straight-weights.json", b_log, None)
        print(f"[1/4] run B (uninterrupted; pid {b.pid}, log straight.log) and run A start")
        a_log = open(root / "interrupted.log", "w", encoding="utf-8")  # noqa: SIM115
        try:
            killed_at = _run_and_kill(framework, a_dir, epochs, kill_after, root, a_log)
            print()
            last = Layout.ours(a_dir).read_pointer("last").epoch
            print(f"[3/4] run A restarted with the same command (last -> epoch {last}, "
                  f"killed during epoch {killed_at + 1})")
            a_log.write(f"--- candle-ckpt demo: SIGKILLed after epoch {killed_at} was "
                        "committed; restarted with the same command ---\n")
            a_log.flush()
            resumed = _spawn(framework, a_dir, epochs, root / "interrupted-weights.json",
                             a_log, None, stdout=subprocess.PIPE)
            _echo(resumed, "  A' | ", a_log)
            _check_exit(resumed, "run A (restarted)", root / "interrupted.log")
        finally:
            a_log.close()
        _check_exit(b, "run B", root / "straight.log")
    finally:
        if b.poll() is None:  # an error above: do not leave run B behind
            b.kill()
            b.wait()
        b_log.close()
    print()
    print(f"[4/4] candle-ckpt list {root}    (a demo directory means its run A, "
          f"{DEMO_RUN}/)")
    print()
    print_listing(Layout.for_reading(a_dir), rows_of(Layout.for_reading(a_dir)))
    print()
    return _compare(root, time.perf_counter() - started)


def _prepare(directory: str | None) -> Path:
    if directory is None:
        root = Path(tempfile.mkdtemp(prefix="candle-ckpt-demo-"))
    else:
        root = Path(directory)
        if root.exists() and not root.is_dir():
            raise CliError(f"--dir {directory}: not a directory")
        if root.is_dir() and any(root.iterdir()):
            if not (root / DEMO_TAG).is_file():
                raise CliError(f"--dir {directory} is not empty and was not made by the demo; "
                               "give a new or empty directory")
            for name in (DEMO_RUN, "straight"):
                shutil.rmtree(root / name, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_TAG).write_text("made by candle-ckpt demo; it may clear this directory\n")
    return root.absolute()


def _spawn(framework: str, ckpt_dir: Path, epochs: int, result: Path, log: IO[str],
           kill_after: int | None, stdout: Any = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "candle_ckpt.cli.demo_trainer", "--framework", framework,
           "--ckpt-dir", str(ckpt_dir), "--epochs", str(epochs), "--result", str(result)]
    if kill_after is not None:
        cmd += ["--announce-after", str(kill_after)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=stdout or log, stderr=log,
                            text=True, env=env)


def _run_and_kill(framework: str, ckpt_dir: Path, epochs: int, kill_after: int, root: Path,
                  log: IO[str]) -> int:
    """Run A until it announces epoch ``kill_after`` committed, then SIGKILL it."""
    a = _spawn(framework, ckpt_dir, epochs, root / "unused.json", log, kill_after,
               stdout=subprocess.PIPE)
    print(f"      run A: pid {a.pid}, log interrupted.log")
    assert a.stdout is not None
    announced = False
    for line in a.stdout:
        if line.startswith(MARKER):
            os.kill(a.pid, signal.SIGKILL)
            announced = True
            break
        _tee(line, "  A  | ", log)
    a.stdout.close()
    _close_stdin(a)
    rc = a.wait()
    if not announced:
        log_path = root / "interrupted.log"
        raise CliError(f"run A ended (exit status {rc}) before epoch {kill_after} was "
                       f"committed; {log_path} ends: {_tail(log_path)}")
    if rc != -signal.SIGKILL:
        raise CliError(f"run A was expected to die of SIGKILL, but exited with {rc}")
    print()
    print(f"[2/4] epoch {kill_after} committed; sent SIGKILL to run A (pid {a.pid}) "
          "in the middle of its run, like a pre-empted job: it died with signal 9")
    return kill_after


def _close_stdin(proc: subprocess.Popen[str]) -> None:
    """Close our end of a child's stdin (the child reads it only to wait to be killed)."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()


def _echo(proc: subprocess.Popen[str], prefix: str, log: IO[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        _tee(line, prefix, log)
    proc.stdout.close()


def _tee(line: str, prefix: str, log: IO[str]) -> None:
    """Show a line of a child's stdout and keep it in its run's log.

    The child's stderr goes to the same log directly (the same open file, so the lines
    stay in order); flushing each line keeps that order.
    """
    print(f"{prefix}{line.rstrip()}", flush=True)
    log.write(line if line.endswith("\n") else line + "\n")
    log.flush()


def _check_exit(proc: subprocess.Popen[str], name: str, log: Path) -> None:
    _close_stdin(proc)
    rc = proc.wait()
    if rc != 0:
        raise CliError(f"{name} failed with exit status {rc}; {log} ends: {_tail(log)}")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"


def _compare(root: Path, elapsed: float) -> int:
    resumed = json.loads((root / "interrupted-weights.json").read_text(encoding="utf-8"))
    straight = json.loads((root / "straight-weights.json").read_text(encoding="utf-8"))
    names = [t["name"] for t in straight["tensors"]]
    differ = [a["name"] for a, b in zip(resumed["tensors"], straight["tensors"], strict=False)
              if a != b]
    if len(resumed["tensors"]) != len(straight["tensors"]):
        differ.append("(number of tensors)")
    count = sum(_prod(t["shape"]) for t in straight["tensors"])
    print(f"run A resumed at epoch {resumed['resumed_from']} and finished epoch "
          f"{resumed['epochs']}: val_loss {resumed['val_loss']:.6g}")
    print(f"run B trained straight through epoch {straight['epochs']}: "
          f"val_loss {straight['val_loss']:.6g}")
    if differ:
        print(f"FAILED: the final weights differ in {', '.join(differ)}")
        return 1
    digest = hashlib.sha256("".join(t["sha256"] for t in straight["tensors"]).encode())
    print(f"final weights: resumed run == uninterrupted run, bit for bit "
          f"({len(names)} tensors, {count:,} values, sha256 {digest.hexdigest()[:16]})")
    print("(the digest itself depends on the CPU, the thread count and library versions; "
          "the equality does not)")
    print(f"demo done in {elapsed:.1f}s; try: candle-ckpt verify {root}")
    return 0


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


