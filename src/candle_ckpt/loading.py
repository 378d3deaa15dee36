"""Reading a checkpoint without a model: :func:`load_state` and :func:`export`.

For analysis, inference, or another tool: one call returns what a checkpoint holds, the
same whether it was written with ``ckpt_dedup`` (shared objects) or not, and
:func:`export` writes it as one plain file the framework reads on its own
(``torch.load``; Keras' ``model.load_weights``). Both verify the checkpoint first
(sizes and, where recorded, checksums of every file and every shared object): damage
raises :class:`~candle_ckpt.errors.CheckpointCorruptError`, it is never returned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CheckpointCorruptError, CheckpointNotFoundError, CkptParamError
from .storage.integrity import check_checkpoint
from .storage.layout import INFO_FILE, Layout, parse_key
from .storage.safeio import display_path, printable

__all__ = ["export", "load_state", "locate"]


def locate(path: str | os.PathLike[str], epoch: int | str | None = None
           ) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory ``path`` names, and its verified ``ckpt-info.json``.

    ``path``: a checkpoint directory (``.../ckpts/epochs/007``), or a ``ckpt_directory``
    (either layout; then ``epoch``: a number, ``"last"`` (default) or ``"best"``).

    Raises:
        CheckpointNotFoundError: nothing there, or no such epoch.
        CheckpointCorruptError: the checkpoint fails verification.
        CkptParamError: ``epoch`` is given with a checkpoint directory, or is not
            accepted.
    """
    where = Path(path)
    if (where / INFO_FILE).is_file() and not (where / "ckpts").is_dir():
        if epoch is not None:
            raise CkptParamError(f"epoch {epoch!r}: {display_path(where)} is one checkpoint "
                                 "already; give its ckpt_directory to choose an epoch")
        directory = where
    else:
        layout = Layout.for_restart(where) or Layout.for_reading(where)
        directory = layout.epoch_dir(*_epoch_of(layout, where, epoch))
    key = parse_key(directory.name)
    if key is None or not directory.is_dir():
        raise CheckpointNotFoundError(f"{display_path(directory)} is not a checkpoint "
                                      "directory (epochs/NNN)")
    info, problems = check_checkpoint(directory, key.epoch, True)
    if info is None or problems:
        raise CheckpointCorruptError(f"{display_path(directory)} fails verification: "
                                     + "; ".join(problems))
    return directory, info


def _epoch_of(layout: Layout, root: Path, epoch: int | str | None) -> tuple[int, int]:
    spec = "last" if epoch is None else epoch
    if spec in ("last", "best"):
        p = layout.read_pointer(str(spec))
        key = p.key
        if key is None:
            raise CheckpointNotFoundError(f"{display_path(root)}: {spec} is not usable: "
                                          f"{printable(p.problem)}")
        return key.epoch, key.batch
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 0:
        raise CkptParamError(f"epoch {spec!r} is not accepted; give an epoch number, "
                             "'last' or 'best'")
    if not layout.is_complete(spec):
        existing = ", ".join(map(str, layout.complete_epochs())) or "none"
        raise CheckpointNotFoundError(f"{display_path(root)}: no complete checkpoint of epoch "
                                      f"{spec} (complete: {existing})")
    return spec, 0


def load_state(path: str | os.PathLike[str], epoch: int | str | None = None) -> Any:
    """What a checkpoint holds, verified, as the framework's own values.

    - torch: the dict ``torch.load`` returns for a ``model.pt`` (``model_state_dict``,
      ``optimizer_state_dict``, ``entries``, ``rng``, ``epoch`` ...), every tensor in
      memory of its own;
    - Keras: ``{path: {name: numpy array}}``, Keras' own layout of a ``.weights.h5``
      (``"layers/dense/vars": {"0": kernel, "1": bias}``, ``"optimizer/vars"`` ...);
    - ``candle_ckpt.testing.CandleCkptFiles``: ``{file name: bytes}``.

    Args:
        path: a checkpoint directory (``.../ckpts/epochs/007``) or a ``ckpt_directory``.
        epoch: with a ``ckpt_directory``: an epoch number, ``"last"`` (default) or
            ``"best"``.

    Raises:
        CheckpointNotFoundError: no such checkpoint.
        CheckpointCorruptError: it fails verification (sizes, checksums, objects).
        CkptParamError: a backend this function does not read.
    """
    directory, info = locate(path, epoch)
    backend = info.get("backend")
    if backend == "torch":
        from .backends.torch.export import read_state
        return read_state(directory, info)
    if backend == "keras":
        from .backends.keras.export import read_state as read_keras
        return read_keras(directory, info)
    if backend == "files":
        from .testing import read_state as read_files
        return read_files(directory, info)
    raise CkptParamError(f"{display_path(directory)}: backend {printable(backend)!r} is not "
                         "one load_state reads (torch, keras, files)")


def export(path: str | os.PathLike[str], out: str | os.PathLike[str],
           epoch: int | str | None = None) -> Path:
    """Write a checkpoint as one plain file the framework loads on its own; its path.

    torch: ``torch.save`` of :func:`load_state` (``torch.load(out, weights_only=True)``
    reads it); Keras: a ``.weights.h5`` (``model.load_weights(out)`` reads it). ``out``
    must not exist; it is written beside itself and renamed into place, complete.

    Raises:
        CheckpointNotFoundError, CheckpointCorruptError: as :func:`load_state`.
        CkptParamError: ``out`` exists, or its name does not suit the framework (Keras
            needs ``.weights.h5``), or the checkpoint's backend has no plain file.
    """
    target = Path(out)
    if os.path.lexists(target):
        raise CkptParamError(f"export: {display_path(target)} exists already; give a new "
                             "file name (nothing is overwritten)")
    if not target.parent.is_dir():
        raise CkptParamError(f"export: {display_path(target.parent)} is not a directory")
    directory, info = locate(path, epoch)
    backend = info.get("backend")
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        if backend == "torch":
            from .backends.torch.export import write_plain
            write_plain(directory, info, tmp)
        elif backend == "keras":
            if not target.name.endswith(".weights.h5"):
                raise CkptParamError(f"export: {display_path(target)}: a Keras checkpoint is "
                                     "written as a .weights.h5 file; give a name ending in "
                                     "'.weights.h5'")
            from .backends.keras.export import write_plain as write_keras
            write_keras(directory, info, tmp)
        else:
            raise CkptParamError(f"export: {display_path(directory)}: backend "
                                 f"{printable(backend)!r} has no plain file format (torch "
                                 "and keras checkpoints are exported)")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, target)  # never over a file that appeared meanwhile
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return target
