"""Checkpoint cost against the disk's own limit and the peers' save/load, in one run.

Run on demand (not part of the test suite):

    python benchmarks/bench_ckpt.py                         # torch and Keras, ~100M params
    python benchmarks/bench_ckpt.py --frameworks torch --device cuda --params 537e6
    python benchmarks/bench_ckpt.py --params 5e6 --repeats 3   # a quick look

Every case runs once per round, round after round (a warm-up round first, not counted),
so that a slow spell of the disk hits every row alike. The save rows take their rounds
first, then the restart rows (reads of cached files, kept apart from GB-sized writes).
Before each case the page cache is synced and the disk left quiet for ``--settle``
seconds. Each row prints the median and the fastest of its rounds, the spread, and two
ratios against its baseline: of the medians, and the median of the per-round ratios
(the paired one, steadier under drift).

The disk limit ("raw write") is the fastest durable way to replace the previous copy
with the same bytes: a new file, large sequential writes, fsync, unlink of the previous
copy (what the keep policy does). The "truncate + rewrite" and "two files in parallel"
rows show how this filesystem treats the alternatives.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------ timing


@dataclass
class Case:
    """One timed thing: ``run()`` returns seconds, or several named seconds."""

    name: str
    run: Callable[[], float | dict[str, float]]
    baseline: str | None = None  # the row its ratio is taken against
    nbytes: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)


class Rounds:
    """Runs cases round-robin and prints one table."""

    def __init__(self, repeats: int, settle: float = 1.0, by_case: bool = False) -> None:
        self.repeats = repeats
        self.settle = settle
        self.by_case = by_case  # each case's rounds back to back instead of round-robin
        self.cases: list[Case] = []
        self.baselines: dict[str, str] = {}  # row -> baseline row (for sub-rows)
        self.extra: list[tuple[str, int, float, str, float]] = []  # (row, bytes, v, base, b)
        self.starts: list[int] = [0]  # where each group of cases begins

    def new_group(self) -> None:
        """The cases added from now on take their rounds after the earlier ones' rounds
        (the restart rows: reads of a cached file, kept apart from GB-sized writes)."""
        self.starts.append(len(self.cases))

    def add(self, name: str, run: Callable[[], float | dict[str, float]],
            baseline: str | None = None, nbytes: int = 0) -> None:
        self.cases.append(Case(name, run, baseline, nbytes))

    def go(self) -> None:
        ends = self.starts[1:] + [len(self.cases)]
        for start, end in zip(self.starts, ends, strict=True):
            if start == end:
                continue  # an empty group (--only restart leaves the save rows out)
            if self.by_case:
                for case in self.cases[start:end]:
                    self._rounds([case])
            else:
                self._rounds(self.cases[start:end])

    def _rounds(self, cases: list[Case]) -> None:
        for r in range(self.repeats + 1):
            for case in cases:
                # Each case starts from a quiet disk, as a save does after an epoch of
                # training: nothing of the previous case's is still being written back.
                os.sync()
                time.sleep(self.settle)
                gc.collect()
                t0 = time.perf_counter()
                out = case.run()
                took = time.perf_counter() - t0
                values = out if isinstance(out, dict) else {"": took if out is None else out}
                if r:  # round 0 warms up: buffers, page cache, a previous copy to replace
                    for key, v in values.items():
                        case.times.setdefault(key, []).append(v)
            print(f"  round {r}/{self.repeats} done", file=sys.stderr, flush=True)

    def rows(self) -> dict[str, tuple[Case, list[float]]]:
        out = {}
        for case in self.cases:
            for key, times in case.times.items():
                out[f"{case.name}{': ' + key if key else ''}"] = (case, times)
        return out

    def print(self, title: str) -> None:
        rows = self.rows()
        print(f"\n{title}")
        print(f"{'measurement':62} {'MB':>7} {'median':>7} {'min':>7} {'spread':>6} "
              f"{'ratio':>6} {'paired':>6}  baseline")
        for name, (case, times) in rows.items():
            med, low = statistics.median(times), min(times)
            spread = (max(times) - low) / med if med > 0 else float("nan")
            base = self.baselines.get(name, case.baseline)
            ratio = paired = float("nan")
            if base is not None and base in rows:
                btimes = rows[base][1]
                ratio = med / statistics.median(btimes)
                paired = statistics.median(a / b for a, b in zip(times, btimes, strict=False))
            short = base.split(": ", 1)[-1] if base else ""
            print(f"{name:62} {case.nbytes / 1e6:7.1f} {med:7.3f} {low:7.3f} {spread:6.0%} "
                  f"{ratio:6.2f} {paired:6.2f}  {short}")
        for name, nbytes, value, base, bvalue in self.extra:
            print(f"{name:62} {nbytes / 1e6:7.1f} {value:7.2f} {'':7} {'':6} "
                  f"{value / bvalue:6.2f} {'':6}  {base}")
        print("seconds; spread: (slowest - fastest) / median; ratio: of the medians; "
              "paired: median of the per-round ratios")


# ------------------------------------------------------------------------------ the disk

_CHUNK = memoryview(bytearray(os.urandom(1 << 20)) * 16)  # 16 MiB, made once, not timed


def raw_write(path: Path, nbytes: int, offset: int = 0, fd: int | None = None) -> None:
    """``nbytes`` in large sequential writes into a new ``path`` (or ``fd``), fsynced."""
    own = fd is None
    if own:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    assert fd is not None
    try:
        left, at = nbytes, offset
        while left > 0:
            n = min(left, len(_CHUNK))
            os.pwrite(fd, _CHUNK[:n], at)
            left, at = left - n, at + n
        if own:
            os.fsync(fd)
    finally:
        if own:
            os.close(fd)


class Disk:
    """The raw rows: each keeps its previous copy, as a steady-state save replaces one."""

    def __init__(self, root: Path, nbytes: int) -> None:
        self.root, self.nbytes, self.i = root, nbytes, 0
        root.mkdir(parents=True, exist_ok=True)

    def _next(self, stem: str) -> tuple[Path, list[Path]]:
        self.i += 1
        return self.root / f"{stem}{self.i}", sorted(self.root.glob(f"{stem}*"))

    def replace(self) -> None:
        """New file + fsync + unlink of the previous copy: the disk limit."""
        path, old = self._next("new")
        raw_write(path, self.nbytes)
        for p in old:
            p.unlink()

    def replace_keep_old(self) -> float:
        """The same, timing only what comes before the unlink."""
        path, old = self._next("keep")
        t0 = time.perf_counter()
        raw_write(path, self.nbytes)
        took = time.perf_counter() - t0
        for p in old:
            p.unlink()
        return took

    def truncate(self) -> None:
        path = self.root / "in-place"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            raw_write(path, self.nbytes, fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def parallel(self, files: int) -> None:
        """Two writers: into ``files`` separate new files, or (1) into one file."""
        stem = f"par{files}-"
        self.i += 1
        old = sorted(self.root.glob(f"{stem}*"))
        paths = [self.root / f"{stem}{self.i}.{k}" for k in range(files)]
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
               for p in paths]
        half = self.nbytes // 2
        # (descriptor, offset) of each writer's half: both halves of one file, or one each
        jobs = [(fds[0], 0), (fds[0], half)] if files == 1 else [(fds[0], 0), (fds[1], 0)]
        threads = [threading.Thread(target=raw_write, args=(None, half, off, fd))
                   for fd, off in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for fd in fds:
            os.fsync(fd)
            os.close(fd)
        for p in old:
            p.unlink()


def drop_cached(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (written back first), for a cold read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def g_params(d: Path, **kv: Any) -> dict[str, Any]:
    g: dict[str, Any] = {"epochs": 10**9, "ckpt_directory": str(d), "ckpt_save_best": False,
                         "ckpt_keep_limit": 1, "ckpt_restart_mode": "auto"}
    g.update(kv)
    return g


def layer_widths(n_params: int, width: int) -> list[int]:
    """Output widths of bias-free dense layers fed by ``width`` inputs: ~n_params in all."""
    full, rest = divmod(max(n_params, width), width * width)
    widths = [width] * full
    if rest // width:
        widths.append(rest // width)  # the last layer takes the remainder
    return widths


# ------------------------------------------------------------------------------ peak RSS

_RSS_CHILD = r"""
import os, sys
import torch
import candle_ckpt as candle
widths, kind, directory, device = eval(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
fresh = kind.endswith(", fresh optimizer")  # no optimizer state yet: restart allocates it
kind = kind.split(",")[0]
model = torch.nn.Sequential(*[torch.nn.Linear(4096, w, bias=False) for w in widths]).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
if not fresh:
    model(torch.randn(2, 4096, device=device)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)
if kind == "dcp.load":
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    import torch.distributed.checkpoint as dcp
import gc
gc.collect()
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to what is resident now
before = status("VmRSS")
if kind == "torch.load":
    sd = torch.load(directory + "/model.pt", weights_only=True, map_location=device)
    model.load_state_dict(sd["model_state_dict"])
    opt.load_state_dict(sd["optimizer_state_dict"])
    del sd
elif kind == "dcp.load":
    msd, osd = get_state_dict(model, opt)
    dcp.load({"model": msd, "optim": osd}, checkpoint_id=directory)
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
    del msd, osd
else:
    c = candle.CandleCkptPyTorch({"epochs": 10**9, "ckpt_directory": directory,
                                  "ckpt_checksum": kind == "candle-ckpt checksums"},
                                 logger=None)
    c.set_model({"model": model, "optimizer": opt})
    assert c.restart(model) is not None
print(status("VmHWM") - before)
"""


def peak_rss_growth(widths: list[int], kind: str, directory: Path, device: str) -> float:
    """Peak RSS growth (bytes) of one restart in a fresh process, peak reset before it."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _RSS_CHILD, repr(widths), kind,
                          str(directory), device], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"RSS child ({kind}) failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ torch


def bench_torch(root: Path, n_params: int, repeats: int, device: str, settle: float,
                by_case: bool = False, only: str = "all", cold_cache: bool = True) -> Rounds:
    import torch
    import torch.distributed.checkpoint as dcp

    import candle_ckpt as candle

    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(0)
    width = 4096
    widths = layer_widths(n_params, width)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, w, bias=False)
                                  for w in widths]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, width, device=device)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    label = f"torch {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M {device}"
    tensors = list(model.state_dict().values()) + [
        v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]

    def state() -> dict[str, Any]:
        return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()}

    plain = root / "plain"
    plain.mkdir(parents=True)
    torch.save(state(), plain / "model.pt")  # the restart baseline reads this one
    nbytes = (plain / "model.pt").stat().st_size
    R = Rounds(repeats, settle, by_case)
    engines: list[Any] = []

    def engine(name: str, **kv: Any) -> Any:
        c = candle.CandleCkptPyTorch(g_params(root / name, **kv), logger=None)
        c.set_model({"model": model, "optimizer": opt})
        engines.append(c)
        return c

    first_stall = 0.0
    if only != "restart":
        disk = Disk(root / "raw", nbytes)
        raw = f"{label}: raw write: new file + fsync + unlink old"
        R.add(raw, disk.replace, raw, nbytes)
        R.add(f"{label}: raw write: the same, not timing the unlink", disk.replace_keep_old, raw,
              nbytes)
        R.add(f"{label}: raw write: truncate + rewrite + fsync", disk.truncate, raw, nbytes)
        R.add(f"{label}: raw write: 2 writers, one file", lambda: disk.parallel(1), raw, nbytes)
        R.add(f"{label}: raw write: 2 writers, 2 files", lambda: disk.parallel(2), raw, nbytes)

        # copies of the state into host memory (the async stall's floor)
        reused = [torch.empty_like(t, device="cpu") for t in tensors]
        copy = f"{label}: copy of the state into reused host memory"

        def copy_into(buffers: list[Any]) -> None:
            for dst, src in zip(buffers, tensors, strict=True):
                dst.copy_(src, non_blocking=cuda and dst.is_pinned())
            sync()

        def copy_fresh() -> None:
            copies = [t.to("cpu", copy=True) for t in tensors]
            sync()
            del copies

        R.add(f"{label}: copy of the state into fresh host memory", copy_fresh, copy, nbytes)
        R.add(copy, lambda: copy_into(reused), copy, nbytes)
        if cuda:
            pinned = [torch.empty_like(t, device="cpu", pin_memory=True) for t in tensors]
            copy = f"{label}: copy of the state into reused pinned memory"
            R.add(copy, lambda: copy_into(pinned), copy, nbytes)

        # the peers
        def torch_save() -> None:
            path = root / "peer" / "model.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save(state(), path)
            fsync_file(path)

        R.add(f"{label}: torch.save + fsync", torch_save, raw, nbytes)
        n_dcp = [0]

        def dcp_dir() -> Path:
            n_dcp[0] += 1
            d = root / f"dcp{n_dcp[0]}"
            shutil.rmtree(root / f"dcp{n_dcp[0] - 2}", ignore_errors=True)  # keep the last one
            return d

        R.add(f"{label}: dcp.save", lambda: dcp.save(state(), checkpoint_id=dcp_dir()) and None,
              raw, nbytes)
        stager, staging = _dcp_stager(cuda, device)

        def dcp_async() -> dict[str, float]:
            t0 = time.perf_counter()
            out = dcp.async_save(state(), checkpoint_id=dcp_dir(), async_stager=stager)
            stall = time.perf_counter() - t0
            future = getattr(out, "upload_completion", out)
            future.result()
            return {"stall": stall, "until durable": time.perf_counter() - t0}

        dcp_async_row = f"{label}: dcp.async_save ({staging} staging)"
        R.add(dcp_async_row, dcp_async, None, nbytes)
        R.baselines[f"{dcp_async_row}: stall"] = copy
        R.baselines[f"{dcp_async_row}: until durable"] = raw
        lightning = _lightning_async(root / "lightning", state)
        if lightning is not None:
            R.add(f"{label}: Lightning AsyncCheckpointIO", lightning, None, nbytes)
            R.baselines[f"{label}: Lightning AsyncCheckpointIO: stall"] = copy
            R.baselines[f"{label}: Lightning AsyncCheckpointIO: until durable"] = raw

        # ours
        for tag, kv in (("sync", {}), ("checksum on", {"ckpt_checksum": True})):
            c = engine(f"ours-{tag}", **kv)
            epoch = [0]

            def save(c: Any = c, epoch: list[int] = epoch) -> None:
                c.ckpt_epoch(epoch[0], 1.0)
                epoch[0] += 1

            R.add(f"{label}: candle-ckpt save ({tag}, durable)", save, raw, nbytes)
        R.baselines[f"{label}: candle-ckpt save (checksum on, durable)"] = raw
        a = engine("ours-async", ckpt_async=True)
        aepoch = [0]

        def async_save() -> dict[str, float]:
            a.wait()
            t0 = time.perf_counter()
            a.ckpt_epoch(aepoch[0], 1.0)
            stall = time.perf_counter() - t0
            a.wait()
            aepoch[0] += 1
            return {"stall": stall, "until durable": time.perf_counter() - t0}

        t0 = time.perf_counter()
        a.ckpt_epoch(0, 1.0)  # the first save of a run: its capture must not allocate
        first_stall = time.perf_counter() - t0
        a.wait()
        aepoch[0] = 1
        R.add(f"{label}: candle-ckpt async", async_save, None, nbytes)
        R.baselines[f"{label}: candle-ckpt async: stall"] = copy
        R.baselines[f"{label}: candle-ckpt async: until durable"] = raw

    # restart
    R.new_group()
    first_restart = len(R.cases)

    def torch_load() -> None:
        sd = torch.load(plain / "model.pt", weights_only=True, map_location=device)
        model.load_state_dict(sd["model_state_dict"])
        opt.load_state_dict(sd["optimizer_state_dict"])
        sync()

    def cold(run: Callable[[], None], directory: Path) -> Callable[[], float]:
        """``run`` timed with ``directory``'s files dropped from the page cache first."""
        def timed() -> float:
            for path in directory.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    drop_cached(path)
            t0 = time.perf_counter()
            run()
            return time.perf_counter() - t0
        return timed

    load = f"{label}: torch.load + load_state_dict"
    R.add(load, torch_load, load, nbytes)
    dcp_restart = root / "dcp-restart"
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=dcp_restart)
    del msd, osd

    def dcp_load() -> None:
        msd, osd = get_state_dict(model, opt)
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=dcp_restart)
        set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
        sync()

    R.add(f"{label}: dcp.load + set_state_dict", dcp_load, load, nbytes)
    restarts = {}
    for tag, kv in (("sizes", {}), ("checksum", {"ckpt_checksum": True})):
        with engine(f"restart-{tag}", **kv) as c:  # (a save engine holds its directory)
            c.ckpt_epoch(0, 1.0)
        r = engine(f"restart-{tag}", **kv)  # ckpt_checksum: verified at restart too

        def restart(r: Any = r) -> None:
            assert r.restart(model) is not None
            sync()

        restarts[tag] = restart
        R.add(f"{label}: candle-ckpt restart ({tag} verified)", restart, load, nbytes)
    if cold_cache:
        cold_load = f"{label}: file not cached: torch.load + load_state_dict"
        R.add(cold_load, cold(torch_load, plain), cold_load, nbytes)
        for tag, restart in restarts.items():
            R.add(f"{label}: file not cached: candle-ckpt restart ({tag} verified)",
                  cold(restart, root / f"restart-{tag}" / "ckpts" / "epochs"), cold_load,
                  nbytes)

    if only == "save":
        del R.cases[first_restart:]
    R.go()
    if only != "restart":
        R.extra.append((f"{label}: candle-ckpt async: first save's stall (vs later median)",
                        nbytes, first_stall, "its later stalls' median",
                        statistics.median(R.rows()[f"{label}: candle-ckpt async: stall"][1])))
    for c in engines:
        c.close()
    if sys.platform.startswith("linux"):  # /proc/self/clear_refs resets the peak
        sizes, checksums = root / "restart-sizes", root / "restart-checksum"
        for what, directory in (("torch.load", sizes / "ckpts" / "last"),
                                ("candle-ckpt", sizes),
                                ("candle-ckpt checksums", checksums),
                                ("dcp.load", dcp_restart),
                                ("torch.load, fresh optimizer", sizes / "ckpts" / "last"),
                                ("candle-ckpt, fresh optimizer", sizes)):
            growth = peak_rss_growth(widths, what, directory, device)
            R.extra.append((f"{label}: peak RSS growth of a {what} restart (GB)", nbytes,
                            growth / 1e9, "checkpoint GB", nbytes / 1e9))
    return R


def _dcp_stager(cuda: bool, device: str) -> tuple[Any, str]:
    """DCP's stager that keeps its host copies between saves (pinned on a GPU), and how
    the row names it.

    ``DefaultStager.close()`` empties the table its deep copy dispatches on, so a stager
    used after ``close()`` fails at the next save with ``KeyError: <class 'type'>``; torch
    versions that close the stager handed to ``dcp.async_save`` after each save broke the
    cached staging this row measures. The stager here is closed once, at exit, and a
    first staging of a small state (on the model's device) proves it works; if it does
    not, the row uses ``dcp.async_save``'s own staging.
    """
    try:
        import torch
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    except ImportError:  # older torch: dcp.async_save's own default
        return None, "default"

    class KeptStager(DefaultStager):  # type: ignore[misc]
        def close(self) -> None:  # dcp.async_save's close: the cache is kept
            pass

    stager = KeptStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                       use_async_staging=False, use_non_blocking_copy=cuda))
    try:
        probe = {"t": torch.ones(4, device=device), "size": torch.Size([4]), "n": 1}
        stager.stage(probe)
    except Exception as err:  # noqa: BLE001 - any failure: measure DCP's default instead
        print(f"dcp.async_save: a cached DefaultStager fails here ({type(err).__name__}: "
              f"{err}); measuring dcp.async_save's own staging", file=sys.stderr)
        return None, "default"
    atexit.register(lambda: DefaultStager.close(stager))
    return stager, f"cached{' pinned' if cuda else ''}"


def _lightning_async(directory: Path, state: Callable[[], dict[str, Any]]
                     ) -> Callable[[], dict[str, float]] | None:
    """Lightning's AsyncCheckpointIO over its TorchCheckpointIO, if Lightning is installed."""
    try:
        from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
    except ImportError:
        try:
            from pytorch_lightning.plugins.io import (  # type: ignore[no-redef]
                AsyncCheckpointIO,
                TorchCheckpointIO,
            )
        except ImportError:
            return None
    io = AsyncCheckpointIO(TorchCheckpointIO())
    directory.mkdir(parents=True, exist_ok=True)
    n = [0]

    def run() -> dict[str, float]:
        n[0] += 1
        path = directory / f"ckpt{n[0]}.ckpt"
        t0 = time.perf_counter()
        io.save_checkpoint(state(), path)
        stall = time.perf_counter() - t0
        io.teardown()  # waits for the write (Lightning's own way to join it)
        fsync_file(path)
        old = directory / f"ckpt{n[0] - 1}.ckpt"
        if old.exists():
            old.unlink()
        return {"stall": stall, "until durable": time.perf_counter() - t0}

    return run


# ------------------------------------------------------------------------------ Keras


def bench_keras(root: Path, n_params: int, repeats: int, settle: float,
                by_case: bool = False) -> Rounds:
    import keras
    import numpy as np

    import candle_ckpt as candle

    width = 4096
    widths = layer_widths(n_params, width)
    model = keras.Sequential([keras.Input((width,))]
                             + [keras.layers.Dense(out, use_bias=False) for out in widths])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.train_on_batch(np.zeros((2, width), "float32"), np.zeros((2, widths[-1]), "float32"))
    label = f"keras {model.count_params() / 1e6:.0f}M ({keras.backend.backend()})"
    plain = root / "plain"
    plain.mkdir(parents=True)
    path = plain / "model.weights.h5"
    model.save_weights(path)
    nbytes = path.stat().st_size
    R = Rounds(repeats, settle, by_case)
    disk = Disk(root / "raw", nbytes)
    raw = f"{label}: raw write: new file + fsync + unlink old"
    R.add(raw, disk.replace, raw, nbytes)

    def save_weights() -> None:
        model.save_weights(path)
        fsync_file(path)

    R.add(f"{label}: model.save_weights + fsync", save_weights, raw, nbytes)
    mc_path = plain / "mc.weights.h5"
    mc = keras.callbacks.ModelCheckpoint(str(mc_path), save_weights_only=True)
    mc.set_model(model)

    def model_checkpoint() -> float:
        t0 = time.perf_counter()
        mc.on_epoch_end(0, {"loss": 1.0})
        took = time.perf_counter() - t0
        fsync_file(mc_path)  # not timed; its dirty pages must not slow the next rows down
        return took

    R.add(f"{label}: keras ModelCheckpoint (not durable: no fsync)", model_checkpoint, raw,
          nbytes)
    arrays = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.variables] + [
        np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]
    reused = [np.empty_like(a) for a in arrays]
    copy = f"{label}: copy of the state into reused host memory"

    def memcpy() -> None:
        for dst, src in zip(reused, arrays, strict=True):
            np.copyto(dst, src)

    R.add(copy, memcpy, copy, nbytes)
    engines = {}
    for tag, kv in (("sync", {}), ("checksum on", {"ckpt_checksum": True}),
                    ("async", {"ckpt_async": True})):
        c = candle.CandleCkptKeras(g_params(root / f"ours-{tag}", **kv), logger=None)
        c.set_model(model)
        engines[tag] = c
        epoch = [0]

        def save(c: Any = c, epoch: list[int] = epoch, tag: str = tag) -> Any:
            c.wait()
            t0 = time.perf_counter()
            c.ckpt_epoch(epoch[0], "-", 1.0)
            stall = time.perf_counter() - t0
            c.wait()
            epoch[0] += 1
            if tag == "async":
                return {"stall": stall, "until durable": time.perf_counter() - t0}
            return time.perf_counter() - t0

        R.add(f"{label}: candle-ckpt save ({tag}{'' if tag == 'async' else ', durable'})",
              save, None if tag == "async" else raw, nbytes)
    R.baselines[f"{label}: candle-ckpt save (async): until durable"] = raw
    R.baselines[f"{label}: candle-ckpt save (async): stall"] = copy
    load = f"{label}: model.load_weights"
    R.new_group()
    R.add(load, lambda: model.load_weights(path), load, nbytes)
    for tag, kv in (("sizes", {}), ("checksum", {"ckpt_checksum": True})):
        with candle.CandleCkptKeras(g_params(root / f"restart-{tag}", **kv), logger=None) as c:
            c.set_model(model)
            c.ckpt_epoch(0, "-", 1.0)
        r = candle.CandleCkptKeras(g_params(root / f"restart-{tag}", **kv), logger=None)
        engines[f"restart-{tag}"] = r

        def restart(r: Any = r) -> None:
            assert r.restart(model) is not None

        R.add(f"{label}: candle-ckpt restart ({tag} verified)", restart, load, nbytes)
    R.go()
    for c in engines.values():
        c.close()
    return R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="100e6",
                    help="comma-separated parameter counts (default 100e6: with Adam a "
                         "1.2 GB checkpoint)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--frameworks", default="torch,keras")
    ap.add_argument("--device", default="cpu",
                    help="torch device of the model: cpu (default), cuda, cuda:N")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds of quiet (after a sync) before every case (default 1)")
    ap.add_argument("--order", choices=("rounds", "case"), default="rounds",
                    help="rounds: every case once per round (default); case: each case's "
                         "rounds back to back, as when one checkpointer is the only writer "
                         "(on thin-provisioned virtual disks, where what a write costs depends "
                         "on which blocks were freed just before)")
    ap.add_argument("--only", choices=("all", "save", "restart"), default="all",
                    help="torch: only the save rows, or only the restart rows (default all)")
    ap.add_argument("--no-cold", action="store_true",
                    help="torch: leave out the restart rows that read a file dropped from the "
                         "page cache first")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="candle-ckpt-bench-"))
    gpu = ""
    if args.device.startswith("cuda"):
        import torch

        gpu = f", GPU {torch.cuda.get_device_name(args.device)}"
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores{gpu}, python "
          f"{platform.python_version()}; writing to {base}; {args.repeats} rounds, order "
          f"{args.order}, settle {args.settle} s")
    try:
        for n in (int(float(p)) for p in args.params.split(",")):
            for fw in args.frameworks.split(","):
                root = base / f"{fw}-{n}"
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                if fw == "torch":
                    table = bench_torch(root, n, args.repeats, args.device, args.settle,
                                        args.order == "case", args.only, not args.no_cold)
                elif fw == "keras":
                    table = bench_keras(root, n, args.repeats, args.settle, args.order == "case")
                else:
                    raise SystemExit(f"--frameworks: {fw!r} is not one of torch, keras")
                table.print(f"candle-ckpt benchmark: {fw}, {n / 1e6:.0f}M parameters")
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
