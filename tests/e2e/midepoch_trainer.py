"""Child process (or one DDP rank) for the exact mid-epoch resume tests: a PyTorch loop
over ``ckpt.batches(loader, epoch)`` with a shuffling loader and Dropout.

With --handshake it prints ``batch E I`` after every batch and waits for a line on
stdin, so the parent knows where training is when it sends SIGUSR1. Under --ddp it is
one rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment), with a
DistributedSampler. The loader has no generator of its own: its order is drawn from
torch's global RNG, which Dropout draws from too.

Writes ``--out`` (``OUT.rankN`` under DDP): the final weights, optimizer state, RNG
state, the sample indices trained by epoch and the number of batches trained. A run
stopped by the signal exits with STOP_CODE once its checkpoint is committed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import candle_ckpt as candle

STOP_CODE = 17
N, FEATURES = 96, 6


def make_loader(args: argparse.Namespace, rank: int, world: int) -> Any:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, FEATURES, generator=g)
    y = x[:, :1] * 2.0 - x[:, 1:2] + 0.1 * torch.randn(N, 1, generator=g)
    dataset = TensorDataset(x, y, torch.arange(N))
    if args.ddp:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=7)
        return DataLoader(dataset, batch_size=4, sampler=sampler,
                          num_workers=args.workers)
    if args.loader == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(dataset, batch_size=4, shuffle=True,
                                  num_workers=args.workers)
    return DataLoader(dataset, batch_size=4, shuffle=True, num_workers=args.workers)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--loader", choices=["dataloader", "stateful"], default="dataloader")
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--handshake", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    rank, world = 0, 1
    if args.ddp:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank (and loader seed)
    loader = make_loader(args, rank, world)
    net = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    model: nn.Module = net
    if args.ddp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net)
    torch.manual_seed(1000 + rank)  # ranks draw different masks and orders
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    ckpt = candle.CandleCkptPyTorch({"epochs": args.epochs, "ckpt_directory": args.ckpt_dir,
                                     "ckpt_signals": "SIGUSR1", "ckpt_checksum": True},
                                    logger=None)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    order: list[list[int]] = [[] for _ in range(args.epochs)]
    trained = 0
    for epoch in range(initial_epoch, args.epochs):
        if args.ddp:
            loader.sampler.set_epoch(epoch)
        model.train()
        epoch_batches = ckpt.batches(loader, epoch)
        for i, (xb, yb, ids) in enumerate(epoch_batches, start=epoch_batches.start):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
            trained += 1
            order[epoch] += ids.tolist()
            if ckpt.ckpt_batch(epoch, i):
                break
            if args.handshake:
                print(f"batch {epoch} {i}", flush=True)
                sys.stdin.readline()
        if ckpt.stop_requested:
            break
        ckpt.ckpt_epoch(epoch, 0.0)
    ckpt.on_train_end()
    out = f"{args.out}.rank{rank}" if args.ddp else args.out
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "order": order, "trained": trained,
                "initial": [initial_epoch, J["batch"] if J is not None else 0]}, out)
    print(f"rank {rank} done: trained {trained}", flush=True)
    if args.ddp:
        import torch.distributed as dist

        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()
    if ckpt.stop_requested:
        sys.stdout.flush()
        os._exit(STOP_CODE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
