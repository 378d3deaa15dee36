"""A PyTorch training loop with CANDLE checkpoints: run it again and it resumes.

    python examples/pytorch_train.py --epochs 5 --ckpt_directory ./save-torch
    python examples/pytorch_train.py --epochs 10 --ckpt_directory ./save-torch  # resumes at 5

Every --ckpt_* option is a CANDLE checkpoint parameter (candle.ckpt_parser adds them all).
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import candle_ckpt as candle


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch training with CANDLE checkpoints")
    parser.add_argument("--epochs", type=int, default=10)
    candle.ckpt_parser(parser)  # --ckpt_directory, --ckpt_checksum, --ckpt_async, ...
    params = parser.parse_args()  # a Namespace or a dict: both are accepted

    # Synthetic regression data, the same in every run.
    data = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 16, generator=data)
    y = x[:, :1] - 2 * x[:, 1:2] + 0.1 * torch.randn(1024, 1, generator=data)
    train = DataLoader(TensorDataset(x[:896], y[:896]), batch_size=32, shuffle=True)
    x_val, y_val = x[896:], y[896:]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)

    # --8<-- [start:usage]
    ckpt = candle.CandleCkptPyTorch(params)
    ckpt.set_model({"model": model, "optimizer": optimizer, "scheduler": scheduler})
    J = ckpt.restart(model)  # None when there is nothing to resume from
    initial_epoch = J["epoch"] if J is not None else 0

    for epoch in range(initial_epoch, params.epochs):
        model.train()
        for xb, yb in train:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
        print(f"epoch {epoch + 1}/{params.epochs}  val_loss {val_loss:.5f}", flush=True)
        ckpt.ckpt_epoch(epoch, val_loss)  # 0-based epoch; saves by the ckpt_* policy
    ckpt.on_train_end()  # waits for a background save, logs the summary
    # --8<-- [end:usage]


if __name__ == "__main__":
    main()
