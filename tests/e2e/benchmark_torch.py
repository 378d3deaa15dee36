"""A small PyTorch benchmark written as CANDLE's are, for the checkpoint/restart regression.

    python benchmark_torch.py --epochs N [--ckpt_* ...]

Checkpoints go to ./save (the ckpt_directory default). As P1B1's PyTorch baseline does:
CandleCkptPyTorch(params) with the default verbosity, ckpt_epoch(epoch, loss) after each
epoch, and "Epoch: E Average loss: ..." printed with the 0-based epoch.
"""

from __future__ import annotations

import argparse

import torch

import candle_ckpt as candle


def main() -> None:
    parser = candle.ckpt_parser(argparse.ArgumentParser())
    parser.add_argument("--epochs", type=int, default=3)
    params = vars(parser.parse_args())

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x[:, :1] - x[:, 1:2]
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    ckpt = candle.CandleCkptPyTorch(params)
    ckpt.set_model({"model": model, "optimizer": optimizer})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    print(f"initial_epoch: {initial_epoch}")
    for epoch in range(initial_epoch, params["epochs"]):
        train_loss = 0.0
        for batch in range(0, len(x), 16):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch:batch + 16]), y[batch:batch + 16])
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
        print(f"====> Epoch: {epoch} Average loss: {train_loss / 4:.4f}")
        ckpt.ckpt_epoch(epoch, train_loss)


if __name__ == "__main__":
    main()
