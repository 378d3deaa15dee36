"""Exact mid-epoch resume with real processes and a real SIGUSR1: a PyTorch loop over
``ckpt.batches(loader, epoch)`` (a shuffling loader, Dropout, Adam) is signalled in the
middle of an epoch, stops after committing a mid-epoch checkpoint, is started again,
and ends with the weights, optimizer state and RNG state of a run never interrupted,
having trained as many batches in total; the same under DDP with world size 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.helpers.process import child_env, free_port  # noqa: E402
from tests.helpers.signals import drive_all  # noqa: E402
from tests.helpers.torch_state import assert_identical  # noqa: E402

TRAINER = Path(__file__).with_name("midepoch_trainer.py")
STOP_CODE = 17  # midepoch_trainer.py's
EPOCHS = 3


def start(ckpt_dir: Path, out: Path, args: list[str], handshake: bool = False,
          rank: int | None = None, world: int = 1, port: int = 0) -> subprocess.Popen[str]:
    env = dict(child_env(), CUDA_VISIBLE_DEVICES="")
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return subprocess.Popen(
        [sys.executable, str(TRAINER), "--ckpt-dir", str(ckpt_dir), "--out", str(out),
         "--epochs", str(EPOCHS), *args, *(["--handshake"] if handshake else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)


def job(ckpt_dir: Path, out: Path, args: list[str], world: int,
        stop_at: str | None = None) -> list[int]:
    """Run every process of one job to its end; with ``stop_at``, SIGUSR1 to the last
    rank when it prints that line. Returns the exit codes."""
    ddp = world > 1
    port = free_port()
    procs = [start(ckpt_dir, out, args + (["--ddp"] if ddp else []),
                   handshake=stop_at is not None, rank=r if ddp else None, world=world,
                   port=port) for r in range(world)]
    if stop_at is not None:
        drive_all(procs, world - 1, stop_at, signal.SIGUSR1)
    errors = []
    for p in procs:
        _, stderr = p.communicate(timeout=180)
        errors.append(stderr)
    codes = [p.returncode for p in procs]
    expected = STOP_CODE if stop_at is not None else 0
    assert codes == [expected] * world, "\n".join(e[-3000:] for e in errors)
    return codes


def results(out: Path, world: int) -> list[dict[str, Any]]:
    paths = [f"{out}.rank{r}" for r in range(world)] if world > 1 else [str(out)]
    return [torch.load(p, weights_only=False) for p in paths]


CASES = {
    "shuffle-no-workers": (["--workers", "0"], 1),
    "shuffle-2-workers": (["--workers", "2"], 1),
    "stateful-dataloader": (["--loader", "stateful"], 1),
    "ddp-2-ranks": (["--workers", "0"], 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sigusr1_mid_epoch_then_a_restart_ends_bit_identical_to_an_uninterrupted_run(
        tmp_path: Path, case: str) -> None:
    args, world = CASES[case]
    if case == "stateful-dataloader":
        pytest.importorskip("torchdata.stateful_dataloader")
    job(tmp_path / "straight", tmp_path / "straight.pt", args, world)
    reference = results(tmp_path / "straight.pt", world)

    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "run.pt"
    # Signalled after batch index 4 of epoch 1: seen at the next batch, 6 batches done.
    job(ckpt_dir, out, args, world, stop_at="batch 1 4")
    assert os.readlink(ckpt_dir / "ckpts" / "last") == "epochs/001+000006"
    stopped = results(out, world)
    saved = ckpt_dir / "ckpts" / "epochs" / "001+000006"
    for rank in range(world):  # each rank's epoch order, in its own file under DDP
        name = f"rng-rank-{rank:05d}.pt" if world > 1 else "model.pt"
        order = torch.load(saved / name, weights_only=True)["epoch_order"]
        assert (order["epoch"], order["position"]) == (1, 6)
        if world > 1:
            assert order["distributed"] == [7, rank, world] and order["sampler_epoch"] == 1
    job(ckpt_dir, out, args, world)
    resumed = results(out, world)

    for rank in range(world):
        ref, first, second = reference[rank], stopped[rank], resumed[rank]
        assert second["initial"] == [1, 6]
        assert first["trained"] + second["trained"] == ref["trained"]
        # No sample of the interrupted epoch twice, none left out, in the same order.
        assert first["order"][1] + second["order"][1] == ref["order"][1]
        assert second["order"][2] == ref["order"][2]
        assert_identical(ref["model"], second["model"], f"rank {rank} weights")
        assert_identical(ref["optimizer"], second["optimizer"], f"rank {rank} optimizer")
        assert_identical(ref["torch_rng"], second["torch_rng"], f"rank {rank} RNG")
    log = (ckpt_dir / "ckpt.log").read_text()
    assert "received SIGUSR1" in log and "epoch 2 resumed after batch 6" in log
