"""The files of a torch checkpoint: ``model.pt`` (and the original CANDLE's ``model.h5``),
each rank's ``rng-rank-NNNNN.pt``, written with ``torch.save`` and read with
``torch.load(weights_only=True)`` from the very file that was checked."""

from __future__ import annotations

import os
import pickle
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import torch

from ...coordination import Coordinator
from ...errors import CheckpointCorruptError, CheckpointMismatchError
from ...storage.safeio import open_regular
from .. import rng as global_rng

if TYPE_CHECKING:
    from ...storage.sink import FileSink

MODEL_FILE = "model.pt"
FORMAT = "candle-ckpt-torch"
FORMAT_VERSION = 1
FORMAT_VERSION_OBJECTS = 2  # ckpt_dedup: large tensors are shared objects (objects.py)
LEGACY_MODEL_FILE = "model.h5"  # the original CANDLE's torch file kept the Keras name


def load_regular(path: Path) -> Any:
    """torch.load of a regular file, opened without following a link (checked once).

    Where /proc exists, torch reads the very file descriptor that was checked, so a
    name swapped for a link after validation is never followed.
    """
    fd = open_regular(path, os.O_RDONLY, role="the model file")
    try:
        proc = f"/proc/self/fd/{fd}"
        source: Any = proc if os.path.exists(proc) else path
        return torch_load(source, path.name)
    finally:
        os.close(fd)


def torch_load(source: Any, name: str, **options: Any) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU; a file that does not unpickle
    so raises :class:`CheckpointCorruptError` saying so in one line.

    torch's own message for it advises loading with ``weights_only=False``: for a
    damaged checkpoint that would run whatever the damage left in it.
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True, **options)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unpickler error:\s*(\S[^\n]*)", str(err))
        first = str(err).strip().split("\n", 1)[0]
        detail = found.group(1).strip() if found else (
            first if first and "weights_only" not in first else "")
        detail = detail.split(". ", 1)[0]  # what it found, not torch's advice
        raise CheckpointCorruptError(
            f"{name}: torch.load(weights_only=True) cannot read it (damaged, or it holds "
            "objects other than tensors and plain data)"
            + f": {type(err).__name__}" + (f": {detail}" if detail else "")) from err


def save(payload: dict[str, Any], sink: FileSink, name: str) -> None:
    """``torch.save`` of ``payload`` into the checkpoint file ``name``."""
    with sink.open(name) as f, _without_zip_crc32():
        torch.save(payload, cast(IO[bytes], f))  # write-only is enough


_crc_guard = threading.Lock()


@contextmanager
def _without_zip_crc32() -> Iterator[None]:
    """torch.save without the zip CRC32 of every record, then the previous setting back.

    The CRC32 costs about half a second per GB (as much as half the disk's own time on
    our machines) and buys nothing: torch.load never checks it (a flipped byte in a
    tensor loads silently, tested). The checkpoint's own manifest does the checking: the
    sizes always, xxh3 checksums with ``ckpt_checksum``. The switch is process-wide, so
    a torch.save of the user's own running at the same instant also skips it (its file
    still loads; only zip tools that test CRCs would complain).
    """
    serialization = torch.serialization
    if not hasattr(serialization, "set_crc32_options"):  # torch < 2.6: always computed
        yield
        return
    with _crc_guard:
        previous = serialization.get_crc32_options()
        serialization.set_crc32_options(False)
        try:
            yield
        finally:
            serialization.set_crc32_options(previous)


# ------------------------------------------------------------------------------ rank files
def rank_file(kind: str, rank: int) -> str:
    """The name of a rank's own file in a checkpoint, e.g. ``rng-rank-00001.pt``."""
    return f"{kind}-rank-{rank:05d}.pt"


def write_rank_rng(sink: FileSink, coord: Coordinator, rng: dict[str, Any],
                   epoch_order: dict[str, Any] | None = None) -> str:
    """This rank's RNG states (``rng``: a torch file's ``rng`` entry), in a file of its
    own (ranks are seeded differently), with its loader's ``epoch_order`` if recorded."""
    name = rank_file("rng", coord.rank)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "rank": coord.rank,
               "world_size": coord.world_size, "rng": rng}
    if epoch_order is not None:
        payload["epoch_order"] = epoch_order
    with sink.open(name) as f:
        torch.save(payload, cast(IO[bytes], f))
    return name


def load_rank_rng(directory: Path, info: dict[str, Any],
                  coord: Coordinator) -> tuple[global_rng.GlobalRng, Any] | None:
    """This rank's saved RNG states (checked, not set) and the raw ``epoch_order`` of its
    file (None if it has none); None: use the model file's.

    Raises:
        CheckpointMismatchError: the checkpoint was saved by another number of ranks
            (per-rank RNG states do not map onto another world size).
        ValueError: the rank's file is damaged.
    """
    saved = info.get("world_size", 1)
    world = coord.world_size
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise ValueError(f"ckpt-info.json: world_size {saved!r} is not a positive integer")
    if saved != world:
        raise CheckpointMismatchError(
            f"{directory} was saved by {saved} rank(s), each with its own RNG states "
            f"(rng-rank-NNNNN.pt); this run has {world}. Per-rank RNG states cannot be "
            f"mapped onto another number of ranks: restart with {saved} rank(s), or use "
            "another ckpt_directory (or ckpt_restart_mode='off') to start afresh"
        )
    if not coord.multi_process or "rank_rng_files" not in info:
        return None  # a single-process checkpoint: its model file holds rank 0's RNGs
    name = rank_file("rng", coord.rank)
    payload = load_regular(directory / name)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT \
            or payload.get("rank") != coord.rank:
        raise CheckpointCorruptError(f"{name} is not the RNG file of rank {coord.rank}")
    return (global_rng.from_torch_file(payload.get("rng"), name, torch),
            payload.get("epoch_order"))
