"""A tiny CANDLE-style PyTorch training run, for the exact-resume tests.

Run as a script: trains ``--epochs`` epochs with Adam, Dropout, a StepLR scheduler, a
shuffling DataLoader and random augmentation (numpy and Python ``random``), checkpointing
every epoch the way CANDLE benchmarks do. ``--exit-after K`` ends the process with
``os._exit`` right after epoch K's checkpoint (no cleanup, like a job killed at its time
limit). The final state is written to ``--out`` with ``torch.save``.

``--validate`` adds a validation pass *after* ``ckpt_epoch`` (a real client's order) whose
``DataLoader(shuffle=True)`` draws a seed from torch's global RNG; ``--epoch-begin`` calls
``ckpt.on_epoch_begin(epoch)`` first thing in each epoch, which makes that order exact.
With either, ``--exit-after K`` dies at the end of epoch K's loop body (after validation),
or, with ``--epoch-begin``, once epoch K's checkpoint is taken as the next epoch begins.
"""

from __future__ import annotations

import argparse
import os
import random

import numpy as np
import torch
from torch import nn

import candle_ckpt as candle

EXIT_CODE = 17


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--exit-after", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--async", dest="async_", action="store_true")
    ap.add_argument("--validate", action="store_true")
    ap.add_argument("--epoch-begin", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)

    data_gen = torch.Generator().manual_seed(123)
    x = torch.randn(48, 8, generator=data_gen)
    y = x[:, :1] * 2.0 - x[:, 1:2] + 0.1 * torch.randn(48, 1, generator=data_gen)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True
    )
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:16], y[:16]), batch_size=8, shuffle=True
    )
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    params = {
        "epochs": args.epochs,
        "ckpt_directory": args.ckpt_dir,
        "ckpt_checksum": True,
        "ckpt_keep_limit": 2,
        "ckpt_async": args.async_,
    }
    # The CANDLE usage pattern, as benchmarks write it.
    ckpt = candle.CandleCkptPyTorch(params, logger=None)
    ckpt.set_model({"model": model, "optimizer": optimizer, "scheduler": scheduler})
    J = ckpt.restart(model)
    initial_epoch = J["epoch"] if J is not None else 0
    print(f"initial_epoch={initial_epoch}", flush=True)

    for epoch in range(initial_epoch, args.epochs):
        if args.epoch_begin:
            ckpt.on_epoch_begin(epoch)
            if args.exit_after and epoch == args.exit_after:  # epoch K's checkpoint is taken
                ckpt.wait()
                os._exit(EXIT_CODE)
        model.train()
        total = 0.0
        for xb, yb in loader:
            xb = xb + torch.from_numpy(np.random.normal(0.0, 0.05, xb.shape).astype("float32"))
            if random.random() < 0.5:
                xb = xb * (1.0 + random.uniform(-0.1, 0.1))
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
        ckpt.ckpt_epoch(epoch, total / len(loader))
        if args.validate:
            model.eval()
            with torch.no_grad():
                for xb, yb in val_loader:  # iterating draws a seed from torch's RNG
                    nn.functional.mse_loss(model(xb), yb)
        if epoch + 1 == args.exit_after and not args.epoch_begin:
            ckpt.wait()  # async: die once epoch K's checkpoint is durable
            os._exit(EXIT_CODE)
    ckpt.on_train_end()

    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
