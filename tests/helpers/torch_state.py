"""Comparing torch states (weights, optimizer state, RNG states) bit for bit."""

from __future__ import annotations

from typing import Any

import torch


def assert_identical(a: Any, b: Any, where: str = "state") -> None:
    """``a`` and ``b`` (nested dicts, lists, tensors, numbers) are equal, tensors bit for
    bit and of the same dtype; ``where`` names the first difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
