"""Data-parallel PyTorch training (DDP) with CANDLE checkpoints: every rank runs the same
calls; rank 0 writes the model once, every rank its RNG states; a restart resumes all ranks.

    torchrun --nproc-per-node 2 examples/pytorch_ddp.py --epochs 4 --ckpt_directory ./save-ddp
    torchrun --nproc-per-node 2 examples/pytorch_ddp.py --epochs 8 --ckpt_directory ./save-ddp

On CPU it uses the gloo backend; with one GPU per rank, NCCL. Restart with the same
number of ranks as the checkpoint was written with.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import candle_ckpt as candle


def main() -> None:
    parser = argparse.ArgumentParser(description="DDP training with CANDLE checkpoints")
    parser.add_argument("--epochs", type=int, default=10)
    candle.ckpt_parser(parser)
    params = parser.parse_args()  # the same parameters on every rank

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun set RANK, WORLD_SIZE, ...
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    data = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=data)
    y = x[:, :1] - 2 * x[:, 1:2] + 0.1 * torch.randn(1024, 1, generator=data)
    dataset = TensorDataset(x[:896], y[:896])
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)  # a shard per rank
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    x_val, y_val = x[896:].to(device), y[896:].to(device)

    torch.manual_seed(0)  # the same initial weights on every rank
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    model = DDP(net.to(device), device_ids=[device.index] if cuda else None)
    torch.manual_seed(1000 + rank)  # but different dropout masks
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)

    ckpt = candle.CandleCkptPyTorch(params)  # on every rank: the ranks act as one
    ckpt.set_model({"model": model, "optimizer": optimizer, "scheduler": scheduler})
    J = ckpt.restart(model)  # every rank restores the same checkpoint, or none does
    initial_epoch = J["epoch"] if J is not None else 0

    for epoch in range(initial_epoch, params.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb.to(device)), yb.to(device)).backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
        if rank == 0:
            print(f"epoch {epoch + 1}/{params.epochs}  val_loss {val_loss:.5f}", flush=True)
        # A collective: every rank calls it for every epoch. The save decision is made
        # once, on the mean of the ranks' values (ckpt_distributed_metric).
        ckpt.ckpt_epoch(epoch, val_loss)
    ckpt.on_train_end()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
