"""Fine-tuning a frozen backbone with incremental checkpoints (ckpt_dedup).

    python examples/pytorch_finetune.py --epochs 5 --ckpt_directory ./save-finetune
    python examples/pytorch_finetune.py --epochs 8 --ckpt_directory ./save-finetune  # resumes
    candle-ckpt list ./save-finetune        # sizes: the backbone is stored once

Every epoch is kept, yet the frozen backbone is written once: each save writes only the
head and Adam's state. At the end, the newest checkpoint is exported as a plain file
that torch.load reads without candle-ckpt.
"""

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import candle_ckpt as candle


def main() -> None:
    parser = argparse.ArgumentParser(description="fine-tuning with incremental checkpoints")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--export", default=None, help="write the last checkpoint here")
    candle.ckpt_parser(parser)
    params = vars(parser.parse_args())

    data = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=data)
    y = torch.tanh(x[:, :64]) + 0.05 * torch.randn(512, 64, generator=data)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

    torch.manual_seed(0)  # "pretrained": the same backbone in every run
    backbone = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU())
    head = nn.Linear(512, 64)
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, head)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)

    # --8<-- [start:usage]
    params.update(ckpt_dedup=True, ckpt_keep_mode="all")  # keep every epoch, cheaply
    ckpt = candle.CandleCkptPyTorch(params)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0

    for epoch in range(initial_epoch, params["epochs"]):
        for xb, yb in train:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x), y).item()
        print(f"epoch {epoch + 1}/{params['epochs']}  loss {loss:.5f}", flush=True)
        ckpt.ckpt_epoch(epoch, loss)  # writes the head and Adam's state; the backbone once
    ckpt.on_train_end()

    if params["export"]:  # one plain file: torch.load(path, weights_only=True) reads it
        candle.export(ckpt.settings.directory, params["export"])
    # --8<-- [end:usage]
        print(f"exported the last checkpoint to {Path(params['export'])}")


if __name__ == "__main__":
    main()
