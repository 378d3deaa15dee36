"""Checkpoint cost against the disk's own limit and the frameworks' plain save/load.

Run on demand (not part of the test suite):

    python benchmarks/bench_ckpt.py                      # ~25M and ~100M parameters
    python benchmarks/bench_ckpt.py --params 5e6 --repeats 3

Prints one table of medians; every row's ratio is against a baseline measured in the
same run (named in the last column).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, int, float, float, float, str]


class Timed(float):
    """A median in seconds that also carries the spread of its repeats."""

    spread: float  # (max - min) / median over the repeats


def timed(times: list[float]) -> Timed:
    t = Timed(statistics.median(times))
    t.spread = (max(times) - min(times)) / t if t > 0 else float("nan")
    return t


def median_time(fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None
                ) -> Timed:
    """Median of ``repeats`` timed calls after one untimed warm-up call.

    The warm-up reaches the steady state every later call sees: buffers allocated, the
    file to read in the page cache, a previous checkpoint or copy for a save to replace.
    """
    times = []
    for i in range(repeats + 1):
        if setup is not None:
            setup()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        if i:
            times.append(time.perf_counter() - t0)
    return timed(times)


_CHUNK = memoryview(bytearray(os.urandom(1 << 20)) * 16)  # 16 MiB, made once, not timed


def raw_write(path: Path, nbytes: int) -> None:
    """Sequential write of nbytes into ``path`` plus fsync (large writes, no copies)."""
    chunk = _CHUNK
    left = nbytes
    with open(path, "wb", buffering=0) as f:
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _g(d: Path, **kv: Any) -> dict[str, Any]:
    g: dict[str, Any] = {"epochs": 1000000, "ckpt_directory": str(d),
                         "ckpt_save_best": False, "ckpt_keep_limit": 1,
                         "ckpt_restart_mode": "auto"}
    g.update(kv)
    return g


_RSS_CHILD = """
import resource, sys
import torch
import candle_ckpt as candle
widths, kind, directory = eval(sys.argv[1]), sys.argv[2], sys.argv[3]
model = torch.nn.Sequential(*[torch.nn.Linear(4096, w, bias=False) for w in widths])
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(2, 4096)).sum().backward()
opt.step()
model.zero_grad(set_to_none=True)
import gc, os
gc.collect()
with open("/proc/self/statm") as f:  # resident now; the peak so far may be higher
    before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
if kind == "torch.load":
    import glob
    sd = torch.load(sorted(glob.glob(directory + "/ckpts/last/model.pt"))[0],
                    weights_only=True, map_location="cpu")
    model.load_state_dict(sd["model_state_dict"])
    opt.load_state_dict(sd["optimizer_state_dict"])
    del sd
else:
    c = candle.CandleCkptPyTorch({"epochs": 10**6, "ckpt_directory": directory}, logger=None)
    c.set_model({"model": model, "optimizer": opt})
    assert c.restart(model) is not None
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def torch_rss_child(widths: list[int]) -> Callable[[Path, str], float]:
    """Peak RSS growth of one restart in a fresh process (no allocator history)."""
    import subprocess
    import sys

    def run(directory: Path, kind: str) -> float:
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, repr(widths), kind,
                              str(directory)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"RSS child ({kind}) failed: {out.stderr[-2000:]}")
        return float(out.stdout.strip().splitlines()[-1])

    return run


class Bench:
    def __init__(self, root: Path, repeats: int) -> None:
        self.root = root
        self.repeats = repeats
        self.rows: list[Row] = []
        self.memcpy_s = float("nan")
        self.rss_child: Callable[[Path, str], float] | None = None

    def fresh(self, name: str) -> Path:
        d = self.root / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def add(self, name: str, nbytes: int, seconds: float, base_name: str, base: float) -> None:
        spread = getattr(seconds, "spread", float("nan"))
        self.rows.append((name, nbytes, seconds, spread,
                          seconds / base if base else float("nan"), base_name))

    def raw(self, nbytes: int, in_place: bool = False) -> Timed:
        """The disk limit of a save that replaces the previous one: the same bytes into a
        NEW file, fsync, then unlink the previous copy (what our keep policy does).

        That is the fastest durable way on the file systems we measured; ``in_place``
        truncates and rewrites one file instead (much slower on ext4/virtio: the blocks
        are freed inside the timing), shown only for comparison.
        """
        d = self.fresh("raw")
        if in_place:
            raw_write(d / "blob", nbytes)
            return median_time(lambda: raw_write(d / "blob", nbytes), self.repeats)
        state = {"i": 0}
        raw_write(d / "blob0", nbytes)  # the previous copy a steady-state save replaces

        def replace() -> None:
            i = state["i"]
            raw_write(d / f"blob{i + 1}", nbytes)
            (d / f"blob{i}").unlink()
            state["i"] = i + 1

        return median_time(replace, self.repeats)

    def ours(self, label: str, make: Callable[[Path, dict[str, Any]], Any],
             save_epoch: Callable[[Any, int], Any], nbytes_hint: int, raw_s: float,
             plain_save: tuple[str, float], plain_load: tuple[str, float],
             load_fn: Callable[[Any], Any]) -> None:
        """Our sync save, checksum on, async stall, restart with/without verification.

        ``save_epoch(ckpt, epoch)`` is the backend's own call (the torch and Keras
        backends' ``ckpt_epoch`` take different arguments).
        """
        sync_s = restart_s = float("nan")
        for checksum in (False, True):
            d = self.fresh(f"{label}-sync-{checksum}")
            ckpt = make(d, _g(d, ckpt_checksum=checksum))
            epoch = [0]

            def save(c: Any = ckpt, epoch: list[int] = epoch) -> None:
                save_epoch(c, epoch[0])
                epoch[0] += 1

            t = median_time(save, self.repeats)
            nbytes = dir_bytes(d / "ckpts" / "last")
            if abs(nbytes - nbytes_hint) > 0.01 * nbytes_hint:
                raw_s = self.raw(nbytes)  # compare with a raw write of exactly our bytes
            tag = "checksum on" if checksum else "sync"
            self.add(f"{label}: candle-ckpt save ({tag}, durable)", nbytes, t, "raw write", raw_s)
            self.add(f"{label}: candle-ckpt save ({tag}, durable)", nbytes, t, plain_save[0],
                     plain_save[1])
            if checksum:
                self.add(f"{label}: save checksum on vs off", nbytes, t, "candle-ckpt save (sync)",
                         sync_s)
            else:
                sync_s = t
            ckpt.close()
            # restart from what was just written
            r = make(d, _g(d, ckpt_checksum=checksum))

            def restart(r: Any = r) -> None:
                load_fn(r)

            t = median_time(restart, self.repeats)
            tag = "checksum verified" if checksum else "sizes verified"
            self.add(f"{label}: candle-ckpt restart ({tag})", nbytes, t, plain_load[0],
                     plain_load[1])
            if checksum:
                self.add(f"{label}: restart checksum on vs off", nbytes, t,
                         "candle-ckpt restart (sizes verified)", restart_s)
            else:
                restart_s = t
            r.close()
            if not checksum and self.rss_child is not None:
                for what in ("torch.load", "candle-ckpt"):
                    growth = self.rss_child(d, what)
                    self.add(f"{label}: peak RSS growth of a {what} restart (GB, not s)",
                             nbytes, growth / 1e9, "checkpoint GB", nbytes / 1e9)
        d = self.fresh(f"{label}-async")
        ckpt = make(d, _g(d, ckpt_async=True))
        stalls, durable = [], []
        for e in range(self.repeats + 1):
            ckpt.wait()  # the previous background write is not part of the stall
            gc.collect()
            t0 = time.perf_counter()
            save_epoch(ckpt, e)
            stalls.append(time.perf_counter() - t0)
            ckpt.wait()
            durable.append(time.perf_counter() - t0)
        ckpt.close()
        stall = timed(stalls[1:])  # the first capture allocates the buffers
        self.add(f"{label}: candle-ckpt async stall", nbytes_hint, stall,
                 "candle-ckpt save (sync)", sync_s)
        if self.memcpy_s == self.memcpy_s:  # measured (torch)
            self.add(f"{label}: candle-ckpt async stall", nbytes_hint, stall, "memcpy",
                     self.memcpy_s)
        self.add(f"{label}: candle-ckpt async first stall (allocates)", nbytes_hint,
                 timed(stalls[:1]), "candle-ckpt save (sync)", sync_s)
        self.add(f"{label}: candle-ckpt async until durable", nbytes_hint,
                 timed(durable[1:]), "raw write", raw_s)

    def print(self, title: str) -> None:
        print(f"\n{title}")
        print(f"{'measurement':54} {'MB':>7} {'median s':>8} {'spread':>6} {'ratio':>6}"
              "  baseline")
        for name, nbytes, s, spread, ratio, base in self.rows:
            print(f"{name:54} {nbytes / 1e6:7.1f} {s:8.3f} {spread:6.0%} {ratio:6.2f}  {base}")
        print("spread: (slowest - fastest) / median over the repeats")


def layer_widths(n_params: int, width: int) -> list[int]:
    """Output widths of bias-free dense layers fed by ``width`` inputs: ~n_params in all."""
    full, rest = divmod(max(n_params, width), width * width)
    widths = [width] * full
    if rest // width:
        widths.append(rest // width)  # the last layer takes the remainder
    return widths


def bench_torch(b: Bench, n_params: int) -> None:
    import torch

    import candle_ckpt as candle

    torch.manual_seed(0)
    width = 4096
    model = torch.nn.Sequential(*[torch.nn.Linear(width, out, bias=False)
                                  for out in layer_widths(n_params, width)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    label = f"torch {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M"

    d = b.fresh("torch-plain")

    def plain_save() -> None:
        path = d / "model.pt"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        fsync_file(path)

    t_save = median_time(plain_save, b.repeats)
    nbytes = (d / "model.pt").stat().st_size
    raw_s = b.raw(nbytes)
    b.add(f"{label}: raw write: new file + fsync + unlink old", nbytes, raw_s, "raw write",
          raw_s)
    b.add(f"{label}: raw write: truncate + rewrite + fsync", nbytes, b.raw(nbytes, True),
          "raw write", raw_s)
    b.add(f"{label}: torch.save + fsync", nbytes, t_save, "raw write", raw_s)
    states = [t for t in model.state_dict().values()] + [
        v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    buffers = [torch.empty_like(t) for t in states]

    def memcpy() -> None:
        for dst, src in zip(buffers, states, strict=True):
            dst.copy_(src)

    b.memcpy_s = median_time(memcpy, b.repeats)
    buffers.clear()
    b.add(f"{label}: memcpy of the state into reused buffers", nbytes, b.memcpy_s, "memcpy",
          b.memcpy_s)

    def plain_load() -> None:
        sd = torch.load(d / "model.pt", weights_only=True, map_location="cpu")
        model.load_state_dict(sd["model"])
        opt.load_state_dict(sd["optimizer"])

    t_load = median_time(plain_load, b.repeats)
    b.add(f"{label}: torch.load + load_state_dict", nbytes, t_load, "torch.load", t_load)

    def make(dir_: Path, g: dict[str, Any]) -> Any:
        c = candle.CandleCkptPyTorch(g, logger=None)
        c.set_model({"model": model, "optimizer": opt})
        return c

    b.rss_child = torch_rss_child(layer_widths(n_params, width))
    b.ours(label, make, lambda c, e: c.ckpt_epoch(e, 1.0), nbytes, raw_s,
           ("torch.save + fsync", t_save),
           ("torch.load", t_load), lambda c: c.restart(model))


def bench_keras(b: Bench, n_params: int) -> None:
    import keras
    import numpy as np

    import candle_ckpt as candle

    width = 4096
    widths = layer_widths(n_params, width)
    model = keras.Sequential([keras.Input((width,))]
                             + [keras.layers.Dense(out, use_bias=False) for out in widths])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.train_on_batch(np.zeros((2, width), "float32"), np.zeros((2, widths[-1]), "float32"))
    label = f"keras {model.count_params() / 1e6:.0f}M"

    d = b.fresh("keras-plain")
    path = d / "model.weights.h5"

    def plain_save() -> None:
        model.save_weights(path)
        fsync_file(path)

    t_save = median_time(plain_save, b.repeats)
    nbytes = path.stat().st_size
    raw_s = b.raw(nbytes)
    b.add(f"{label}: raw write: new file + fsync + unlink old", nbytes, raw_s, "raw write",
          raw_s)
    b.add(f"{label}: model.save_weights + fsync", nbytes, t_save, "raw write", raw_s)
    b.memcpy_s = float("nan")
    b.rss_child = None
    mc_path = d / "mc.weights.h5"
    mc = keras.callbacks.ModelCheckpoint(str(mc_path), save_weights_only=True)
    mc.set_model(model)
    t_mc = median_time(lambda: mc.on_epoch_end(0, {"loss": 1.0}), b.repeats)
    b.add(f"{label}: keras ModelCheckpoint (no fsync)", nbytes, t_mc, "raw write", raw_s)
    t_load = median_time(lambda: model.load_weights(path), b.repeats)
    b.add(f"{label}: model.load_weights", nbytes, t_load, "load_weights", t_load)

    def make(dir_: Path, g: dict[str, Any]) -> Any:
        c = candle.CandleCkptKeras(g, logger=None)
        c.set_model(model)
        return c

    b.ours(label, make, lambda c, e: c.ckpt_epoch(e, "-", 1.0), nbytes, raw_s,
           ("model.save_weights + fsync", t_save),
           ("load_weights", t_load), lambda c: c.restart(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="25e6,100e6",
                    help="comma-separated parameter counts (default: 25e6,100e6; 100e6 with "
                         "Adam is a 1.2 GB checkpoint)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frameworks", default="torch,keras")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="candle-ckpt-bench-"))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; writing to {root}; {args.repeats} repeats, medians")
    b = Bench(root, args.repeats)
    try:
        for n in (int(float(p)) for p in args.params.split(",")):
            for fw in args.frameworks.split(","):
                {"torch": bench_torch, "keras": bench_keras}[fw](b, n)
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True, exist_ok=True)
        b.print("candle-ckpt benchmark")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
