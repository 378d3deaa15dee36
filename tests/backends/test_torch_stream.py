"""Tests for `candle_ckpt.backends.torch.stream`: restart copies a memory-mapped model file
into the live tensors chunk by chunk, in bounded memory, and keeps nothing mapped."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import candle_ckpt as candle  # noqa: E402
from candle_ckpt.backends.torch import stream as torch_stream  # noqa: E402

LINUX = sys.platform.startswith("linux")


def _trained(seed: int, width: int = 600, layers: int = 2) -> tuple[nn.Module, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)],
                          nn.BatchNorm1d(width))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, width)).square().mean().backward()
        opt.step()
    return model, opt


def _save(directory: Path, model: nn.Module, opt: Any, **extra: Any) -> Path:
    params = {"epochs": 10, "ckpt_directory": str(directory), **extra}
    with candle.CandleCkptPyTorch(params, logger=None) as ckpt:
        ckpt.set_model({"model": model, "optimizer": opt})
        ckpt.ckpt_epoch(0, 1.0)
    return directory / "ckpts" / "epochs" / "001" / "model.pt"


def _assert_equal(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            _assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    else:
        assert a == b


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


# ------------------------------------------------------------------------------ restart
@pytest.mark.parametrize("fresh", [False, True], ids=["stepped optimizer", "fresh optimizer"])
def test_restart_copies_every_saved_value_exactly_and_keeps_nothing_mapped(
        tmp_path: Path, fresh: bool) -> None:
    model, opt = _trained(0)
    path = _save(tmp_path, model, opt)
    saved = torch.load(path, weights_only=True)
    other, other_opt = _trained(1)
    if fresh:
        other_opt = torch.optim.Adam(other.parameters(), lr=1e-2)  # no state yet
    # 600 x 600 weights: 1.4 MB, above the size that is cloned rather than copied into
    states_before = {id(t) for s in other_opt.state.values() for t in s.values()}
    ckpt = candle.CandleCkptPyTorch({"epochs": 10, "ckpt_directory": str(tmp_path)},
                                    logger=None)
    ckpt.set_model({"model": other, "optimizer": other_opt})
    assert ckpt.restart(other) is not None
    _assert_equal(other.state_dict(), saved["model_state_dict"])
    _assert_equal(other_opt.state_dict(), saved["optimizer_state_dict"])
    states_after = {id(t) for s in other_opt.state.values() for t in s.values()
                    if t.numel() >= 600 * 600}
    assert len(states_after) == 4  # exp_avg, exp_avg_sq of both weights
    if not fresh:  # the large state tensors were copied into, not replaced
        assert states_after <= states_before
    ckpt.close()
    if LINUX:
        gc.collect()
        assert str(path) not in _mapped_files()
        assert "model.pt" not in _mapped_files()


def test_what_restart_copies_does_not_change_when_the_file_is_deleted_after(
        tmp_path: Path) -> None:
    model, opt = _trained(0)
    path = _save(tmp_path, model, opt)
    other, other_opt = _trained(1)
    ckpt = candle.CandleCkptPyTorch({"epochs": 10, "ckpt_directory": str(tmp_path)},
                                    logger=None)
    ckpt.set_model({"model": other, "optimizer": other_opt})
    assert ckpt.restart(other) is not None
    ckpt.close()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in other_opt.state.values()]
    path.unlink()
    path.write_bytes(b"\0" * 4096)  # a new file on the same name: nothing may read it
    _assert_equal(other.state_dict(), before)
    _assert_equal([s["exp_avg"] for s in other_opt.state.values()], moments)


_PEAK_SCRIPT = textwrap.dedent("""
    import gc, json, sys
    import torch
    from torch import nn
    import candle_ckpt as candle

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

    def reset():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) starts again from what is resident now
        return status("VmRSS")

    torch.manual_seed(int(sys.argv[3]))
    # A model of a few large tensors: 4 x 16.8 MB weights, with Adam ~201 MB in all.
    model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(4)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 2048)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    params = {"epochs": 2, "ckpt_directory": sys.argv[1], "ckpt_checksum": True}
    if sys.argv[2] == "save":
        with candle.CandleCkptPyTorch(params, logger=None) as ckpt:
            ckpt.set_model({"model": model, "optimizer": opt})
            ckpt.ckpt_epoch(0, 1.0)
        sys.exit()
    ckpt = candle.CandleCkptPyTorch(params, logger=None)
    ckpt.set_model({"model": model, "optimizer": opt})
    before = reset()
    assert ckpt.restart(model) is not None
    streamed = status("VmHWM") - before
    ckpt.close()
    before = reset()  # the baseline, measured the same way: read whole, then copied
    state = torch.load(sys.argv[4], weights_only=True)
    model.load_state_dict(state["model_state_dict"])
    opt.load_state_dict(state["optimizer_state_dict"])
    plain = status("VmHWM") - before
    print(json.dumps({"streamed": streamed, "plain": plain}))
""")


@pytest.mark.skipif(not LINUX, reason="peak RSS is read from /proc/self/status")
def test_a_restart_adds_at_most_a_quarter_of_the_checkpoint_to_peak_memory(
        tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), "save", "0", ""],
                   check=True)
    path = tmp_path / "ckpts" / "epochs" / "001" / "model.pt"
    size = path.stat().st_size
    assert size > 190e6
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path), "load", "1",
                          str(path)], check=True, capture_output=True, text=True).stdout
    peaks = json.loads(out.strip().splitlines()[-1])
    # The measurement sees a whole-file read: torch.load + load_state_dict adds most of
    # the file (0.75x here: memory the streamed restart freed back to the heap is reused).
    assert peaks["plain"] > 0.5 * size, (peaks, size)
    # Streaming (checksums verified too) adds about one 32 MB chunk: bound 0.25x.
    assert peaks["streamed"] <= 0.25 * size, (peaks, size)


# ------------------------------------------------------------------------------ the pieces
def test_chunked_copies_with_pages_dropped_between_them_are_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    big = torch.randn(300_001)  # not a whole number of pages or chunks
    transposed = torch.randn(96, 64).t()  # saved with its strides: not contiguous
    path = tmp_path / "state.pt"
    torch.save({"big": big, "t": transposed, "n": 3}, path)
    monkeypatch.setattr(torch_stream, "CHUNK_BYTES", 3 * 4096 + 12)  # odd, page-crossing
    mapped = torch_stream.load_mapped(path, lambda p: pytest.fail("read whole"))
    assert mapped.extent is not None and mapped.mapped(mapped.payload["big"])
    dst = torch.zeros(300_001)
    mapped.copy_into(dst, mapped.payload["big"])
    assert torch.equal(dst, big)
    dst_t = torch.zeros(64, 96)
    mapped.copy_into(dst_t, mapped.payload["t"])
    assert torch.equal(dst_t, transposed)
    mapped.copy_into(dst, mapped.payload["big"])  # dropped pages are read again
    assert torch.equal(dst, big)
    owned = mapped.owned({"x": [mapped.payload["big"]], "n": 3})
    assert not mapped.mapped(owned["x"][0]) and torch.equal(owned["x"][0], big)
    assert not mapped.mapped(dst)


def test_a_model_file_torch_cannot_map_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    read: list[Path] = []

    def whole(p: Path) -> Any:
        read.append(p)
        return torch.load(p, weights_only=True)

    mapped = torch_stream.load_mapped(path, whole)
    assert read == [path] and mapped.extent is None
    assert torch.equal(mapped.payload["x"], torch.ones(3))
    dst = torch.zeros(3)
    mapped.copy_into(dst, mapped.payload["x"])  # nothing mapped: nothing dropped
    assert torch.equal(dst, torch.ones(3))
    assert mapped.owned(mapped.payload["x"]) is mapped.payload["x"]
