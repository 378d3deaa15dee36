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

Run as ``python -m candle_ckpt.demo --framework torch --ckpt-dir DIR ...`` this module is
the child's training script.
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from .layout import Layout

MARKER = "CANDLE-CKPT-DEMO-COMMITTED"
_DEMO_TAG = ".candle-ckpt-demo"  # marks a directory the demo may clear and reuse
_FEATURES, _HIDDEN, _TRAIN, _VAL, _BATCH = 32, 64, 1024, 256, 32
_SEED = 20240601


# =============================================================================== parent


def run_demo(framework: str, directory: str | None, epochs: int = 8,
             kill_after: int = 3) -> int:
    """Run the demo; returns 0 when the resumed run's weights equal the straight run's.

    Raises:
        CliError: the framework is not installed, the directory is not usable, or a
            child run failed (with the tail of its log).
    """
    from .cli import CliError, print_listing, rows_of

    if kill_after >= epochs:
        raise CliError(f"--kill-after {kill_after} must be smaller than --epochs {epochs}")
    module = "torch" if framework == "torch" else "keras"
    if importlib.util.find_spec(module) is None:
        raise CliError(f"the {framework} demo needs {module}: "
                       f"pip install 'candle-ckpt[{framework}]'")
    root = _prepare(directory)
    started = time.perf_counter()
    print(f"candle-ckpt demo: {framework}, an MLP {_FEATURES}-{_HIDDEN}-1 with dropout, "
          f"{epochs} epochs on synthetic data,")
    print(f"checkpoint every epoch (ckpt_checksum=True), in {root}")
    print()
    a_dir, b_dir = root / "interrupted", root / "straight"
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
            resumed = _spawn(framework, a_dir, epochs, root / "interrupted-weights.json",
                             a_log, None, stdout=subprocess.PIPE)
            _echo(resumed, "  A' | ")
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
    print(f"[4/4] candle-ckpt list {a_dir}")
    print()
    print_listing(Layout.for_reading(a_dir), rows_of(Layout.for_reading(a_dir)))
    print()
    return _compare(root, time.perf_counter() - started)


def _prepare(directory: str | None) -> Path:
    from .cli import CliError

    if directory is None:
        root = Path(tempfile.mkdtemp(prefix="candle-ckpt-demo-"))
    else:
        root = Path(directory)
        if root.exists() and not root.is_dir():
            raise CliError(f"--dir {directory}: not a directory")
        if root.is_dir() and any(root.iterdir()):
            if not (root / _DEMO_TAG).is_file():
                raise CliError(f"--dir {directory} is not empty and was not made by the demo; "
                               "give a new or empty directory")
            for name in ("interrupted", "straight"):
                shutil.rmtree(root / name, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    (root / _DEMO_TAG).write_text("made by candle-ckpt demo; it may clear this directory\n")
    return root.absolute()


def _spawn(framework: str, ckpt_dir: Path, epochs: int, result: Path, log: IO[str],
           kill_after: int | None, stdout: Any = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "candle_ckpt.demo", "--framework", framework,
           "--ckpt-dir", str(ckpt_dir), "--epochs", str(epochs), "--result", str(result)]
    if kill_after is not None:
        cmd += ["--announce-after", str(kill_after)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=stdout or log, stderr=log,
                            text=True, env=env)


def _run_and_kill(framework: str, ckpt_dir: Path, epochs: int, kill_after: int, root: Path,
                  log: IO[str]) -> int:
    """Run A until it announces epoch ``kill_after`` committed, then SIGKILL it."""
    from .cli import CliError

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
        print(f"  A  | {line.rstrip()}", flush=True)
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


def _echo(proc: subprocess.Popen[str], prefix: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"{prefix}{line.rstrip()}", flush=True)
    proc.stdout.close()


def _check_exit(proc: subprocess.Popen[str], name: str, log: Path) -> None:
    from .cli import CliError

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
    print(f"demo done in {elapsed:.1f}s; try: candle-ckpt verify {root / 'interrupted'}")
    return 0


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# =============================================================================== child


def _params(ckpt_dir: str, epochs: int) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "ckpt_directory": ckpt_dir,
        "ckpt_checksum": True,
        "ckpt_save_best_metric": "val_loss",
        "ckpt_restart_mode": "auto",
    }


class _Announcer:
    """Run A's side of the kill: announce the commit, then never finish on its own."""

    def __init__(self, ckpt_dir: str, after: int | None, batches: int) -> None:
        self.layout = Layout.ours(Path(ckpt_dir))
        self.after = after
        self.halfway = batches // 2
        self.announced = False

    def epoch_committed(self, epoch_done: int) -> None:
        if self.after is None or epoch_done != self.after:
            return
        last = self.layout.read_pointer("last").epoch
        if last != epoch_done:  # e.g. an asynchronous save: never announce what is not there
            raise SystemExit(f"demo: epoch {epoch_done} finished but last -> {last}")
        print(f"{MARKER} {epoch_done}", flush=True)
        self.announced = True

    def batch_done(self, batch: int) -> None:
        if self.announced and batch == self.halfway:
            sys.stdin.read()  # the parent never writes: this returns only if it went away
            raise SystemExit("demo: the parent went away before killing this run")


def _digest(named: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    import numpy as np

    out = []
    for name, value in named:
        array = np.ascontiguousarray(value)
        out.append({"name": name, "shape": list(array.shape), "dtype": str(array.dtype),
                    "sha256": hashlib.sha256(array.tobytes()).hexdigest()})
    return out


def _data(numpy_like: Callable[..., Any]) -> tuple[Any, Any, Any, Any]:
    """Synthetic regression data, the same in every process (its own seeded RNG)."""
    import numpy as np

    rng = np.random.default_rng(_SEED)
    w = rng.normal(size=(_FEATURES, 1)).astype("float32")
    x = rng.normal(size=(_TRAIN + _VAL, _FEATURES)).astype("float32")
    y = (np.tanh(x @ w) + 0.1 * rng.normal(size=(_TRAIN + _VAL, 1))).astype("float32")
    return (numpy_like(x[:_TRAIN]), numpy_like(y[:_TRAIN]), numpy_like(x[_TRAIN:]),
            numpy_like(y[_TRAIN:]))


def _train_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from . import CandleCkptPyTorch

    torch.set_num_threads(1)
    torch.manual_seed(_SEED)
    x, y, xv, yv = _data(torch.from_numpy)
    model = torch.nn.Sequential(
        torch.nn.Linear(_FEATURES, _HIDDEN), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(_HIDDEN, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ckpt = CandleCkptPyTorch(_params(args.ckpt_dir, args.epochs))
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J else 0
    batches = _TRAIN // _BATCH
    announcer = _Announcer(args.ckpt_dir, args.announce_after, batches)
    val_loss = float("nan")
    for epoch in range(initial_epoch, args.epochs):
        model.train()
        order = torch.randperm(_TRAIN)  # the global RNG: restored by restart
        for b in range(batches):
            idx = order[b * _BATCH:(b + 1) * _BATCH]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            announcer.batch_done(b)
        model.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(model(xv), yv))
        print(f"epoch {epoch + 1}/{args.epochs}  val_loss {val_loss:.6f}", flush=True)
        ckpt.ckpt_epoch(epoch, val_loss)
        announcer.epoch_committed(epoch + 1)
    ckpt.on_train_end()
    tensors = _digest((k, v.detach().cpu().numpy()) for k, v in model.state_dict().items())
    return {"resumed_from": initial_epoch if J else None, "val_loss": val_loss,
            "tensors": tensors}


def _train_keras(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from . import CandleCkptKeras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(_SEED)
    x, y, xv, yv = _data(lambda a: a)
    model = keras.Sequential([
        keras.Input((_FEATURES,)),
        keras.layers.Dense(_HIDDEN, activation="relu"),
        keras.layers.Dropout(0.1, seed=_SEED),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    ckpt = CandleCkptKeras(_params(args.ckpt_dir, args.epochs))
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J else 0
    batches = _TRAIN // _BATCH
    announcer = _Announcer(args.ckpt_dir, args.announce_after, batches)
    logs_seen: dict[str, float] = {}

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs_seen.update(logs or {})
            print(f"epoch {epoch + 1}/{args.epochs}  val_loss {logs_seen['val_loss']:.6f}",
                  flush=True)
            announcer.epoch_committed(epoch + 1)  # runs after ckpt's on_epoch_end

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            announcer.batch_done(batch)

    model.fit(x, y, validation_data=(xv, yv), batch_size=_BATCH, epochs=args.epochs,
              initial_epoch=initial_epoch, shuffle=True, verbose=0,
              callbacks=[ckpt, Progress()])
    tensors = _digest((v.path, keras.ops.convert_to_numpy(v)) for v in model.weights)
    return {"resumed_from": initial_epoch if J else None,
            "val_loss": float(logs_seen.get("val_loss", float("nan"))), "tensors": tensors}


def child_main(argv: list[str] | None = None) -> int:
    """One training run of the demo (a child process of ``run_demo``)."""
    parser = argparse.ArgumentParser(prog="python -m candle_ckpt.demo")
    parser.add_argument("--framework", choices=("torch", "keras"), required=True)
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--announce-after", type=int, default=None)
    args = parser.parse_args(argv)
    result = _train_torch(args) if args.framework == "torch" else _train_keras(args)
    result.update(framework=args.framework, epochs=args.epochs)
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
