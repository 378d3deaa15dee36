"""One rank of a tiny DDP training run on CPU (gloo), for the distributed tests.

Launched like torchrun launches a worker: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
in the environment. Every rank runs the same CANDLE calls. DDP with Dropout, a
DistributedSampler that shuffles, Adam and a StepLR scheduler; the ranks are seeded
differently (as real jobs are), so each rank's RNG state matters.

Faults, chosen by the test through the environment:
  DDP_EXIT_AFTER=K       os._exit(EXIT_CODE) right after epoch K's checkpoint
  DDP_EXIT_RANK=R        ... on rank R only (default: every rank)
  DDP_DIE_IN_SAVE=K      rank DDP_EXIT_RANK dies inside epoch K's save, after writing
                         its files into work/, before the ranks agree to commit
  DDP_FAIL_WRITE=K       rank DDP_EXIT_RANK's write of epoch K fails (ENOSPC)
  DDP_FAIL_CAPTURE=K     rank DDP_EXIT_RANK's capture of epoch K raises
  DDP_SIGNAL_AT=E:B      with --batch-ckpt: rank DDP_EXIT_RANK sends itself SIGUSR1 after
                         batch B of epoch E (0-based); every rank must stop there
The final parameters are written to --out (one file per rank: OUT.rankN); a
CheckpointWriteError is printed as one JSON line and the rank exits with FAIL_CODE.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import signal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import candle_ckpt as candle
from candle_ckpt.backends import torch as torch_backend

EXIT_CODE = 17
FAIL_CODE = 3


def _inject_faults(rank: int) -> None:
    """Wrap this rank's checkpoint write with the fault the environment asks for."""
    fault_rank = int(os.environ.get("DDP_EXIT_RANK", "-1"))
    die_in = int(os.environ.get("DDP_DIE_IN_SAVE", "0"))
    fail_at = int(os.environ.get("DDP_FAIL_WRITE", "0"))
    fail_capture = int(os.environ.get("DDP_FAIL_CAPTURE", "0"))
    if rank != fault_rank or not (die_in or fail_at or fail_capture):
        return
    original = torch_backend.TorchBackend.write
    original_capture = torch_backend.TorchBackend.capture

    def capture(self, live, progress):  # type: ignore[no-untyped-def]
        if progress.epoch == fail_capture:
            raise candle.CkptParamError("cannot checkpoint 'model' (injected)")
        return original_capture(self, live, progress)

    def write(self, snapshot, sink):  # type: ignore[no-untyped-def]
        epoch = snapshot.progress.epoch  # the 1-based epoch being saved
        if epoch == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        written = original(self, snapshot, sink)
        if epoch == die_in:
            sink.finish()  # its files are durable in work/; the commit never happens
            print(f"dying in save {epoch}", flush=True)
            os._exit(EXIT_CODE)
        return written

    torch_backend.TorchBackend.write = write  # type: ignore[method-assign]
    torch_backend.TorchBackend.capture = capture  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--async", dest="async_", action="store_true")
    ap.add_argument("--metric", default="mean")
    ap.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP")
    ap.add_argument("--dedup", action="store_true",
                    help="ckpt_dedup, with a frozen 6->4096 layer (an object) in front")
    ap.add_argument("--batch-ckpt", action="store_true",
                    help="call ckpt_batch after every step, stop on SIGUSR1")
    args = ap.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    _inject_faults(rank)
    torch.manual_seed(1000 + rank)  # ranks draw different dropout masks and noise
    np.random.seed(2000 + rank)
    random.seed(3000 + rank)

    data_gen = torch.Generator().manual_seed(123)
    x = torch.randn(64, 6, generator=data_gen)
    y = x[:, :1] * 2.0 - x[:, 1:2] + 0.1 * torch.randn(64, 1, generator=data_gen)
    dataset = TensorDataset(x, y)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=7)
    # A generator of its own: creating the loader's iterator draws no global RNG, so a
    # run resumed mid-epoch draws exactly what an uninterrupted one does.
    loader = DataLoader(dataset, batch_size=8, sampler=sampler,
                        generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)  # the same initial weights on every rank (DDP checks)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 1))
    if args.dedup:  # a frozen layer large enough to be a shared object
        net = nn.Sequential(nn.Linear(6, 4096), nn.ReLU(), nn.Dropout(0.3), nn.Linear(4096, 1))
        net[0].requires_grad_(False)
    torch.manual_seed(1000 + rank)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        fully_shard(net[0])
        fully_shard(net[3])
        model = fully_shard(net)
    else:
        model = DDP(net)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    params = {
        "epochs": args.epochs,
        "ckpt_directory": args.ckpt_dir,
        "ckpt_checksum": True,
        "ckpt_keep_mode": "all",
        "ckpt_async": args.async_,
        "ckpt_dedup": args.dedup,
        "ckpt_distributed_metric": args.metric,
        "ckpt_signals": "SIGUSR1" if args.batch_ckpt else "none",
    }
    ckpt = candle.CandleCkptPyTorch(params, logger=None)
    ckpt.set_model({"model": model, "optimizer": optimizer, "scheduler": scheduler})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    skip = J["batch"] if J is not None else 0
    signal_at = tuple(int(v) for v in os.environ.get("DDP_SIGNAL_AT", "-1:-1").split(":"))
    print(f"rank {rank} initial_epoch={initial_epoch}", flush=True)

    exit_after = int(os.environ.get("DDP_EXIT_AFTER", "0"))
    exit_rank = int(os.environ.get("DDP_EXIT_RANK", "-1"))
    try:
        for epoch in range(initial_epoch, args.epochs):
            sampler.set_epoch(epoch)
            model.train()
            total = 0.0
            for i, (xb, yb) in enumerate(loader):
                if epoch == initial_epoch and i < skip:
                    continue  # trained before the stop
                xb = xb + torch.from_numpy(np.random.normal(0.0, 0.05, xb.shape)
                                           .astype("float32"))
                if random.random() < 0.5:
                    xb = xb * (1.0 + random.uniform(-0.1, 0.1))
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(xb), yb)
                loss.backward()
                optimizer.step()
                total += loss.item()
                if (epoch, i) == signal_at and exit_rank == rank:
                    os.kill(os.getpid(), signal.SIGUSR1)
                if args.batch_ckpt and ckpt.ckpt_batch(epoch, i):
                    print(f"rank {rank} stopped at epoch {epoch} batch {i}", flush=True)
                    break
            if ckpt.stop_requested:
                ckpt.on_train_end()
                os._exit(EXIT_CODE)
            scheduler.step()
            saved = ckpt.ckpt_epoch(epoch, total / len(loader))
            print(f"rank {rank} epoch {epoch + 1} saved={saved} loss={total / len(loader)!r}",
                  flush=True)
            if epoch + 1 == exit_after and exit_rank in (-1, rank):
                ckpt.wait()  # async: die once epoch K's checkpoint is committed
                os._exit(EXIT_CODE)
        ckpt.on_train_end()
    except candle.CheckpointWriteError as err:
        print(json.dumps({"rank": rank, "error": type(err).__name__, "errno": err.errno,
                          "message": str(err)}), flush=True)
        os._exit(FAIL_CODE)

    if args.fsdp:  # the whole state, gathered, to compare runs
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        full, full_optim = get_state_dict(  # a collective: every rank gets all of it
            model, optimizer, options=StateDictOptions(full_state_dict=True))
    else:
        full, full_optim = net.state_dict(), optimizer.state_dict()
    torch.save({"model": full, "optimizer": full_optim,
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": torch.from_numpy(np.random.get_state()[1].copy()),
                "python_rng": random.getstate()}, f"{args.out}.rank{rank}")
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
