"""A backend without a framework: it saves named byte blobs. For tests and examples.

``CandleCkptFiles`` checkpoints ``self.state`` (a dict of file name -> bytes) as real
files of the chosen sizes, and restores it on restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends.base import UNKNOWN_PROGRESS, Progress, Restored, Written
from .engine import CandleCkpt
from .storage.safeio import read_regular
from .storage.sink import FileSink

_MAX_BLOB = 1 << 40


class FilesBackend:
    """The backend protocol over a dict of file name -> bytes (the first is the model)."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {"model.bin": b""}

    def capture(self, live: bool, progress: Progress = UNKNOWN_PROGRESS) -> dict[str, bytes]:
        return dict(self.state) if live else {n: bytes(d) for n, d in self.state.items()}

    def write(self, snapshot: dict[str, bytes], sink: FileSink) -> Written:
        for name, data in snapshot.items():
            with sink.open(name) as f:
                f.write(data)
        return Written(next(iter(snapshot)), {})

    def load(self, directory: Path, info: dict[str, Any]) -> Restored:
        files = info.get("files") or {info.get("model_file", "model.bin"): {}}
        # Regular files only, never through a link swapped in since validation.
        state = {name: read_regular(directory / name, _MAX_BLOB, "a checkpoint file")
                 for name in files}

        def apply() -> list[str]:
            self.state = state
            return []

        return Restored(apply)


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
