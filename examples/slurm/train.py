"""The training script of train.sbatch: a PyTorch loop that survives pre-emption.

Under SLURM (SLURM_JOB_ID is set) candle-ckpt's defaults do the work:
  - SIGUSR1 and SIGTERM mean "save now and stop" (ckpt_signals=auto): at the next batch a
    mid-epoch checkpoint is committed and ckpt_batch returns True;
  - after a stop caused by SIGUSR1, the job is requeued (ckpt_requeue=auto runs
    `scontrol requeue $SLURM_JOB_ID`);
  - the job's end time (SLURM_JOB_END_TIME) is a deadline too: it saves and stops
    ckpt_walltime_margin seconds before it (ckpt_walltime_end=auto).
The requeued job runs this script again; ckpt.batches() resumes the interrupted epoch
after the batch where it stopped, in the order the stopped job was using.

    python examples/slurm/train.py --epochs 20 --ckpt_directory ./save-slurm
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import candle_ckpt as candle


def main() -> None:
    parser = argparse.ArgumentParser(description="pre-emptible training with CANDLE checkpoints")
    parser.add_argument("--epochs", type=int, default=20)
    candle.ckpt_parser(parser)
    params = parser.parse_args()

    data = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 16, generator=data)
    y = x[:, :1] - 2 * x[:, 1:2] + 0.1 * torch.randn(2048, 1, generator=data)
    train = DataLoader(TensorDataset(x[:1792], y[:1792]), batch_size=32, shuffle=True)
    x_val, y_val = x[1792:], y[1792:]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    ckpt = candle.CandleCkptPyTorch(params)
    ckpt.set_model({"model": model, "optimizer": optimizer})  # installs the signal handlers
    J = ckpt.restart(model)
    start_epoch = J["epoch"] if J is not None else 0

    for epoch in range(start_epoch, params.epochs):
        model.train()
        # The epoch's batches; after a stop, the rest of the interrupted epoch, in its
        # order (the batches already trained are skipped, their samples never loaded).
        batches = ckpt.batches(train, epoch)
        for i, (xb, yb) in enumerate(batches, start=batches.start):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
            if ckpt.ckpt_batch(epoch, i):  # a stop was due: the checkpoint is committed
                break
        if ckpt.stop_requested:
            print(f"stopped in epoch {epoch + 1}; the next run resumes there", flush=True)
            break
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
        print(f"epoch {epoch + 1}/{params.epochs}  val_loss {val_loss:.5f}", flush=True)
        ckpt.ckpt_epoch(epoch, val_loss)
    ckpt.on_train_end()  # restores the previous signal handlers


if __name__ == "__main__":
    main()
