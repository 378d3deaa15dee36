"""A backend without a framework: it saves named byte blobs. For tests and examples.

``CandleCkptFiles`` checkpoints ``self.state`` (a dict of file name -> bytes) as real
files of the chosen sizes, and restores it on restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .backends.base import UNKNOWN_PROGRESS, Progress, Restored, Written
from .engine import CandleCkpt
from .storage.objects import Array, open_object
from .storage.safeio import read_regular
from .storage.sink import FileSink

_MAX_BLOB = 1 << 40
INDEX_FILE = "blobs.json"  # ckpt_dedup: blob name -> object name


class FilesBackend:
    """The backend protocol over a dict of file name -> bytes (the first is the model)."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {"model.bin": b""}

    def capture(self, live: bool, progress: Progress = UNKNOWN_PROGRESS) -> dict[str, bytes]:
        return dict(self.state) if live else {n: bytes(d) for n, d in self.state.items()}

    def write(self, snapshot: dict[str, bytes], sink: FileSink) -> Written:
        if sink.objects is not None:  # ckpt_dedup: every blob a shared object
            names = sink.put_objects([Array("uint8", (len(d),), memoryview(d))
                                      for d in snapshot.values()])
            with sink.open(INDEX_FILE) as f:
                f.write(json.dumps(dict(zip(snapshot, names, strict=True))).encode())
            return Written(INDEX_FILE, {})
        for name, data in snapshot.items():
            with sink.open(name) as f:
                f.write(data)
        return Written(next(iter(snapshot)), {})

    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        # Regular files only, never through a link swapped in since validation.
        state = read_state(directory, info)

        def apply() -> list[str]:
            self.state = state
            return []

        return Restored(apply)


def read_state(directory: Path, info: dict[str, Any]) -> dict[str, bytes]:
    """The blobs of a checkpoint (``candle_ckpt.load_state``), read without links."""
    if info.get("model_file") == INDEX_FILE and "objects" in info:
        return _read_objects(directory, info)
    files = info.get("files") or {info.get("model_file", "model.bin"): {}}
    return {name: read_regular(directory / name, _MAX_BLOB, "a checkpoint file")
            for name in files}


def _read_objects(directory: Path, info: dict[str, Any]) -> dict[str, bytes]:
    """The blobs of a ``ckpt_dedup`` checkpoint, read from the shared objects."""
    index = json.loads(read_regular(directory / INDEX_FILE, _MAX_BLOB, "a checkpoint file"))
    listed = info["objects"]
    if not isinstance(index, dict) or not isinstance(listed, dict):
        raise ValueError(f"{INDEX_FILE} or ckpt-info.json's objects is malformed")
    state = {}
    for name, obj in index.items():
        entry = listed.get(obj)
        if not isinstance(entry, dict):
            raise ValueError(f"object {obj!r} of {name!r} is not listed in ckpt-info.json")
        fd, header = open_object(directory, obj, entry["size"])
        try:
            data = os.pread(fd, entry["size"], header.offset)
        finally:
            os.close(fd)
        if header.dtype != "uint8" or header.shape != (len(data),):
            raise ValueError(f"object {obj} is not the bytes of {name!r}")
        state[name] = data
    return state


class CandleCkptFiles(CandleCkpt):
    """Checkpoints a dict of file name -> bytes; the first name is the model file."""

    backend_name = "files"
    backend: FilesBackend

    def _new_backend(self) -> FilesBackend:
        return FilesBackend()

    @property
    def state(self) -> dict[str, bytes]:
        return self.backend.state

    @state.setter
    def state(self, value: dict[str, bytes]) -> None:
        self.backend.state = dict(value)

    def set_model(self, state: dict[str, bytes]) -> None:
        if not state:
            raise ValueError("set_model: state must name at least one file")
        self.backend.state = dict(state)

    def _attach_model(self, model: Any) -> None:
        if isinstance(model, dict):
            self.set_model(model)

    def _is_model(self, obj: Any) -> bool:
        """A dict of file name -> bytes (any other dict is hyperparameters)."""
        return isinstance(obj, dict) and bool(obj) and all(
            isinstance(v, (bytes, bytearray)) for v in obj.values())
