"""The process-wide RNG states: one schema, captured, checked and restored for every backend.

An exact resume needs the global generators a training step may draw from: Python's
``random``, numpy's legacy global ``RandomState``, torch's CPU generator and, once CUDA
is in use, torch's CUDA generators (one per device). :func:`capture` reads them into a
:class:`GlobalRng`, :func:`restore` sets them.

Each backend keeps the encoding its checkpoints always had: a torch ``model.pt`` (and a
rank's ``rng-rank-NNNNN.pt``) holds tensors under ``rng`` (:func:`to_torch_file`), a
Keras ``rng-state.json`` holds JSON (:func:`to_json`). Both decode into the same
:class:`GlobalRng` (:func:`from_torch_file`, :func:`from_json`), which checks every state
before anything is set, so every checkpoint written so far restarts, checked alike.
Framework modules are passed in (``torch=``), never imported here.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointCorruptError

try:  # numpy is optional for torch; its global RNG is saved when it is importable
    import numpy as _np
except ImportError:  # pragma: no cover - torch wheels normally bring numpy along
    _np = None  # type: ignore[assignment]

__all__ = ["GlobalRng", "NumpyState", "as_tuples", "capture", "from_json", "from_torch_file",
           "restore", "to_json", "to_torch_file"]

_MT_WORDS = 624  # a Mersenne Twister state: numpy's RandomState keys


@dataclass(frozen=True)
class NumpyState:
    """numpy's legacy global ``RandomState`` (``np.random.get_state(legacy=True)``)."""

    bit_generator: str
    keys: tuple[int, ...]
    pos: int
    has_gauss: int
    cached_gaussian: float


@dataclass(frozen=True)
class GlobalRng:
    """The global RNG states of one process; None: not captured (not in use, not saved)."""

    python: tuple[Any, ...] | None = None  # random.getstate()
    numpy: NumpyState | None = None
    torch: bytes | None = None  # torch.get_rng_state()
    cuda: tuple[bytes, ...] | None = None  # torch.cuda.get_rng_state_all()


# ------------------------------------------------------------------------ capture, restore
def capture(torch: Any = None) -> GlobalRng:
    """The global RNG states now; torch's (CPU, and CUDA once initialized) with ``torch``."""
    numpy_state = None
    if _np is not None:
        name, keys, pos, has_gauss, cached = _np.random.get_state(legacy=True)
        numpy_state = NumpyState(str(name), tuple(int(k) for k in keys), int(pos),
                                 int(has_gauss), float(cached))
    torch_state = cuda = None
    if torch is not None:
        torch_state = bytes(torch.get_rng_state().tolist())  # tolist: numpy is optional
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = tuple(bytes(s.tolist()) for s in torch.cuda.get_rng_state_all())
    return GlobalRng(random.getstate(), numpy_state, torch_state, cuda)


def restore(state: GlobalRng, torch: Any = None) -> tuple[list[str], list[str]]:
    """Set the global RNG states of a checked :class:`GlobalRng`.

    torch's states are set only with ``torch`` (a process that never loaded torch has
    nothing drawing from them). Returns (what was restored, problems worth a warning).
    """
    restored: list[str] = []
    problems: list[str] = []
    if state.python is not None:
        random.setstate(state.python)
        restored.append("python random")
    if state.numpy is not None:
        if _np is None:
            problems.append("numpy is not installed; its RNG state is not restored")
        else:
            n = state.numpy
            _np.random.set_state((n.bit_generator, _np.array(n.keys, dtype=_np.uint32),
                                  n.pos, n.has_gauss, n.cached_gaussian))
            restored.append("numpy random")
    if torch is None:
        return restored, problems
    if state.torch is not None:
        torch.set_rng_state(_byte_tensor(torch, state.torch))
        restored.append("torch random")
    if state.cuda:
        if not torch.cuda.is_available():
            problems.append("the checkpoint holds CUDA RNG states but CUDA is not available "
                            "here; they are not restored")
        elif len(state.cuda) != torch.cuda.device_count():
            problems.append(f"the checkpoint holds {len(state.cuda)} CUDA RNG states, this "
                            f"machine has {torch.cuda.device_count()} devices; they are not "
                            "restored")
        else:
            torch.cuda.set_rng_state_all([_byte_tensor(torch, s) for s in state.cuda])
            restored.append(f"torch CUDA random ({len(state.cuda)} device(s))")
    return restored, problems


def _byte_tensor(torch: Any, data: bytes) -> Any:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def as_tuples(value: Any) -> Any:
    """Lists made tuples again, at every depth (a Python RNG state read back from a file)."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------ checking
def _checked(state: GlobalRng, torch: Any, field: Callable[[str], str]) -> GlobalRng:
    """``state`` if every part of it can be set; else ValueError naming the file's field
    (``field("python")`` is how this file's format names the Python state)."""
    if state.python is not None:
        try:
            random.Random().setstate(state.python)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{field('python')} is not a random state: {err}") from None
    n = state.numpy
    if n is not None:
        if not (isinstance(n.bit_generator, str) and len(n.keys) == _MT_WORDS
                and all(_is_int(k) for k in n.keys) and _is_int(n.pos)
                and _is_int(n.has_gauss) and _is_number(n.cached_gaussian)):
            raise ValueError(f"{field('numpy')} is not a numpy RandomState state")
        if _np is not None:
            try:
                _np.random.RandomState().set_state((
                    n.bit_generator, _np.array(n.keys, dtype=_np.uint32), n.pos,
                    n.has_gauss, n.cached_gaussian))
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(f"{field('numpy')} is not a numpy RandomState state: "
                                 f"{err}") from None
    if state.torch is not None and torch is not None \
            and len(state.torch) != torch.get_rng_state().numel():
        raise ValueError(f"{field('torch')} is not a torch CPU generator state (wrong size)")
    if state.cuda is not None and not all(state.cuda):
        raise ValueError(f"{field('cuda')} is not a list of CUDA generator states")
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------ a torch file
_TORCH_FIELDS = {"python": "rng['python']", "numpy": "rng['numpy']",
                 "torch": "rng['torch']", "cuda": "rng['cuda']"}


def to_torch_file(state: GlobalRng, torch: Any) -> dict[str, Any]:
    """The ``rng`` entry of a torch checkpoint file (tensors, read with weights_only)."""
    rng: dict[str, Any] = {}
    if state.torch is not None:
        rng["torch"] = _byte_tensor(torch, state.torch)
    if state.cuda is not None:
        rng["cuda"] = [_byte_tensor(torch, s) for s in state.cuda]
    if state.numpy is not None:
        n = state.numpy
        rng["numpy"] = {"bit_generator": n.bit_generator,
                        "keys": torch.tensor(n.keys, dtype=torch.int64),
                        "pos": n.pos, "has_gauss": n.has_gauss,
                        "cached_gaussian": n.cached_gaussian}
    if state.python is not None:
        rng["python"] = state.python
    return rng


def from_torch_file(rng: Any, name: str, torch: Any) -> GlobalRng:
    """The checked states of a torch file's ``rng`` entry (:func:`to_torch_file`'s).

    Raises:
        CheckpointCorruptError: ``name`` (the file) holds no such states, or damaged ones.
    """
    if not isinstance(rng, dict):
        raise CheckpointCorruptError(f"{name}: 'rng' is a {type(rng).__name__}, expected a dict")

    def field(key: str) -> str:
        return _TORCH_FIELDS[key]

    def tensor_bytes(value: Any, key: str) -> bytes:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 \
                or value.dim() != 1:
            raise CheckpointCorruptError(
                f"{name}: {field(key)} is not a torch {'CUDA' if key == 'cuda' else 'CPU'} "
                "generator state")
        return bytes(value.tolist())

    torch_state = rng.get("torch")
    cuda = rng.get("cuda")
    if cuda is not None and not isinstance(cuda, list):
        raise CheckpointCorruptError(f"{name}: rng['cuda'] is not a list of CUDA generator "
                                     "states")
    numpy_state = rng.get("numpy")
    state_n = None
    if numpy_state is not None:
        keys = numpy_state.get("keys") if isinstance(numpy_state, dict) else None
        if not isinstance(keys, torch.Tensor) or keys.dim() != 1:
            raise CheckpointCorruptError(f"{name}: rng['numpy'] is not a numpy RandomState "
                                         "state")
        state_n = NumpyState(numpy_state.get("bit_generator"), tuple(keys.tolist()),
                             numpy_state.get("pos"), numpy_state.get("has_gauss"),
                             numpy_state.get("cached_gaussian"))
    python = rng.get("python")
    state = GlobalRng(
        python=None if python is None else as_tuples(python),
        numpy=state_n,
        torch=None if torch_state is None else tensor_bytes(torch_state, "torch"),
        cuda=None if cuda is None else tuple(tensor_bytes(s, "cuda") for s in cuda))
    try:
        return _checked(state, torch, field)
    except ValueError as err:
        raise CheckpointCorruptError(f"{name}: {err}") from None


# ------------------------------------------------------------------------ a JSON file
_JSON_FIELDS = {"python": "python_random", "numpy": "numpy_random",
                "torch": "torch_random", "cuda": "torch_cuda_random"}


def to_json(state: GlobalRng) -> dict[str, Any]:
    """The global states as JSON fields (a Keras ``rng-state.json``; None: not captured)."""
    out: dict[str, Any] = {"python_random": None, "numpy_random": None}
    if state.python is not None:
        version, internal, gauss = state.python
        out["python_random"] = {"version": version, "state": list(internal),
                                "gauss_next": gauss}
    if state.numpy is not None:
        n = state.numpy
        out["numpy_random"] = {"bit_generator": n.bit_generator, "key": list(n.keys),
                               "pos": n.pos, "has_gauss": n.has_gauss,
                               "cached_gaussian": n.cached_gaussian}
    out["torch_random"] = None if state.torch is None else _b64(state.torch)
    out["torch_cuda_random"] = None if state.cuda is None else [_b64(s) for s in state.cuda]
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def from_json(record: dict[str, Any], where: str, torch: Any = None) -> GlobalRng:
    """The checked global states of a JSON record (:func:`to_json`'s fields).

    Raises:
        CheckpointCorruptError: a state is damaged (``where``: the file, for the message).
    """
    try:
        py = record.get("python_random")
        npr = record.get("numpy_random")
        raw = record.get("torch_random")
        cuda = record.get("torch_cuda_random")
        if cuda is not None and not (isinstance(cuda, list)
                                     and all(isinstance(c, str) for c in cuda)):
            raise ValueError("torch_cuda_random is not a list of generator states")
        state = GlobalRng(
            python=None if py is None else (py["version"], tuple(py["state"]),
                                            py["gauss_next"]),
            numpy=None if npr is None else NumpyState(
                npr["bit_generator"], tuple(npr["key"]), npr["pos"], npr["has_gauss"],
                npr["cached_gaussian"]),
            torch=None if raw is None else base64.b64decode(raw, validate=True),
            cuda=None if cuda is None else tuple(base64.b64decode(c, validate=True)
                                                 for c in cuda))
        return _checked(state, torch, _JSON_FIELDS.__getitem__)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError,
            binascii.Error) as err:
        raise CheckpointCorruptError(f"{where}: a global RNG state is damaged: {err}") from None
