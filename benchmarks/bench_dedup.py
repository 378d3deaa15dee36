"""``ckpt_dedup`` against plain checkpoints of the same states, in one run.

Run on demand (not part of the test suite):

    python benchmarks/bench_dedup.py                      # 1.2 GB of weights (300M params)
    python benchmarks/bench_dedup.py --params 50e6        # a quick look

1. Fine-tuning: a stack of Linear layers, 90 % of the parameters frozen (the first
   layers), Adam on the rest, 10 epochs, every checkpoint kept. Each epoch's state is
   saved twice, by an engine with ``ckpt_dedup`` and by one without (alternating which
   goes first), into two directories. Printed: the dedup directory's disk use against
   one full checkpoint + 9 x the changing part (trainable weights and Adam's moments),
   and the sync save time of epochs 2-10 against the plain saves of the same states.
2. Full training: every parameter trainable (Adam), 4 epochs, the same two engines;
   then restarts of the newest checkpoint of each directory into a fresh model, round
   after round. Printed: save and restart time against plain.

Times are medians over the epochs (or rounds) with their spread; ratios are of the
medians and, in brackets, the median of the per-epoch ratios (paired, steadier on a
loaded machine). The page cache is synced before each save.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import candle_ckpt as candle

MAX_WIDTH = 4096  # one Linear(4096, 4096) layer: 16.8M parameters, 67 MB
MIN_LAYERS = 20  # so that 90 % frozen is 18 layers of 20


def disk_use(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (allocated blocks; links not
    followed, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def width_for(params: float) -> int:
    """Layers as wide as MAX_WIDTH, or narrower so that there are MIN_LAYERS of them."""
    return max(64, min(MAX_WIDTH, int((params / MIN_LAYERS) ** 0.5) // 64 * 64))


def build(params: float, frozen_share: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    width = width_for(params)
    layers = max(2, round(params / (width * width + width)))
    frozen = min(layers - 1, round(layers * frozen_share))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    for layer in list(model)[:frozen]:
        layer.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(trainable, lr=1e-4)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    x = torch.randn(2, model[0].in_features)
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def engine(directory: Path, dedup: bool, epochs: int) -> Any:
    return candle.CandleCkptPyTorch(
        {"epochs": epochs, "ckpt_directory": str(directory), "ckpt_dedup": dedup,
         "ckpt_keep_mode": "all", "ckpt_save_best": False, "ckpt_restart_mode": "off"},
        logger=None)


def timed_save(ckpt: Any, epoch: int, metric: float) -> float:
    os.sync()
    start = time.perf_counter()
    ckpt.ckpt_epoch(epoch, metric)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):7.3f} s  (min {min(values):.3f}, "
            f"max {max(values):.3f}, n={len(values)})")


def ratio(a: list[float], b: list[float]) -> str:
    paired = statistics.median(x / y for x, y in zip(a, b, strict=True))
    return f"{statistics.median(a) / statistics.median(b):.3f}x  [paired {paired:.3f}x]"


def save_both(model: nn.Module, optimizer: Any, root: Path, epochs: int
              ) -> tuple[list[float], list[float]]:
    """Train and save each epoch with and without dedup; the two lists of save times."""
    dedup, plain = engine(root / "dedup", True, epochs), engine(root / "plain", False, epochs)
    for ckpt in (dedup, plain):
        ckpt.set_model({"model": model, "optimizer": optimizer})
    times: dict[bool, list[float]] = {True: [], False: []}
    for epoch in range(epochs):
        metric = train_step(model, optimizer)
        order = (True, False) if epoch % 2 == 0 else (False, True)
        for which in order:
            times[which].append(timed_save(dedup if which else plain, epoch, metric))
    dedup.close()
    plain.close()
    return times[True], times[False]


def fine_tuning(args: argparse.Namespace, root: Path) -> None:
    model, optimizer = build(args.params, 0.9)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    changing = 3 * trainable  # the weights and Adam's two moments
    print(f"\n1. fine-tuning: {total / 1e9:.3f} GB of weights, {trainable / total:.0%} "
          f"trainable; a checkpoint holds {(total + 2 * trainable) / 1e9:.3f} GB of which "
          f"{changing / 1e9:.3f} GB change each epoch; {args.epochs} epochs, all kept")
    dedup, plain = save_both(model, optimizer, root, args.epochs)
    first_full = disk_use(root / "plain" / "ckpts" / "epochs" / "001")
    used = disk_use(root / "dedup" / "ckpts")
    bound = first_full + (args.epochs - 1) * changing
    plain_used = disk_use(root / "plain" / "ckpts")
    print(f"   disk: dedup {used / 1e9:.3f} GB, plain {plain_used / 1e9:.3f} GB; one full + "
          f"{args.epochs - 1} x the changing part = {bound / 1e9:.3f} GB")
    print(f"   disk used / (one full + {args.epochs - 1} x changing) = {used / bound:.3f}x  "
          "(target <= 1.15)")
    print(f"   first save (everything new): dedup {dedup[0]:.3f} s, plain {plain[0]:.3f} s "
          f"= {dedup[0] / plain[0]:.3f}x")
    print(f"   saves 2-{args.epochs}: dedup {spread(dedup[1:])}")
    print(f"   saves 2-{args.epochs}: plain {spread(plain[1:])}")
    print(f"   sync save time dedup / plain = {ratio(dedup[1:], plain[1:])}  (target <= 0.4)")
    shutil.rmtree(root / "dedup")
    shutil.rmtree(root / "plain")


def full_training(args: argparse.Namespace, root: Path) -> None:
    model, optimizer = build(args.params / 4, 0.0)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"\n2. full training: {total / 1e9:.3f} GB of weights, all trainable (Adam), "
          f"{args.full_epochs} epochs")
    dedup, plain = save_both(model, optimizer, root, args.full_epochs)
    print(f"   saves: dedup {spread(dedup)}")
    print(f"   saves: plain {spread(plain)}")
    print(f"   save time dedup / plain = {ratio(dedup, plain)}  (target <= 1.05)")
    restarts: dict[bool, list[float]] = {True: [], False: []}
    fresh, fresh_optimizer = build(args.params / 4, 0.0)
    train_step(fresh, fresh_optimizer)  # the optimizer has its state tensors, as on resume
    for i in range(args.repeats):
        for which in ((True, False) if i % 2 == 0 else (False, True)):
            ckpt = candle.CandleCkptPyTorch(
                {"epochs": args.full_epochs,
                 "ckpt_directory": str(root / ("dedup" if which else "plain")),
                 "ckpt_restart_mode": "required"}, logger=None)
            ckpt.set_model({"model": fresh, "optimizer": fresh_optimizer})
            start = time.perf_counter()
            J = ckpt.restart(fresh)
            restarts[which].append(time.perf_counter() - start)
            ckpt.close()
            assert J["epoch"] == args.full_epochs
    print(f"   restarts (cached files): dedup {spread(restarts[True])}")
    print(f"   restarts (cached files): plain {spread(restarts[False])}")
    print(f"   restart time dedup / plain = {ratio(restarts[True], restarts[False])}  "
          "(target <= 1.05)")
    shutil.rmtree(root / "dedup")
    shutil.rmtree(root / "plain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=300e6,
                        help="parameters of the fine-tuned model (default 300e6: 1.2 GB)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--full-epochs", type=int, default=4,
                        help="epochs of the full-training case (its model: params / 4)")
    parser.add_argument("--repeats", type=int, default=5, help="restart rounds")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--cases", default="fine-tuning,full",
                        help="comma-separated: fine-tuning, full")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="bench-dedup-", dir=args.dir))
    try:
        print(f"bench_dedup: torch {torch.__version__}, Python {platform.python_version()}, "
              f"{platform.machine()}, {os.cpu_count()} CPUs, writing into {top}")
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        cases = set(args.cases.split(","))
        if "fine-tuning" in cases:
            fine_tuning(args, top)
        if "full" in cases:
            full_training(args, top)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
