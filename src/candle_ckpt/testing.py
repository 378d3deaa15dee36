"""A backend without a framework: it saves named byte blobs. For tests and examples.

``CandleCkptFiles`` checkpoints ``self.state`` (a dict of file name -> bytes) as real
files of the chosen sizes, and restores it on restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .commit import FileSink
from .engine import CandleCkpt


class CandleCkptFiles(CandleCkpt):
    """Checkpoints a dict of file name -> bytes; the first name is the model file."""

    backend_name = "files"

    def __init__(self, gParameters: Any = None, logger: Any = "DEFAULT",
                 verbose: bool = True) -> None:
        self.state: dict[str, bytes] = {"model.bin": b""}
        super().__init__(gParameters, logger, verbose)

    def set_model(self, state: dict[str, bytes]) -> None:
        if not state:
            raise ValueError("set_model: state must name at least one file")
        self.state = dict(state)

    def attach_model(self, model: Any) -> None:
        if isinstance(model, dict):
            self.set_model(model)

    def capture_state(self) -> dict[str, bytes]:
        return {name: bytes(data) for name, data in self.state.items()}

    def write_state(self, snapshot: dict[str, bytes], sink: FileSink) -> str:
        for name, data in snapshot.items():
            with sink.open(name) as f:
                f.write(data)
        return next(iter(snapshot))

    def load_state(self, directory: Path, info: dict[str, Any]) -> None:
        files = info.get("files") or {info.get("model_file", "model.bin"): {}}
        self.state = {name: (directory / name).read_bytes() for name in files}
