"""Assertions and input makers shared by the kernel tests."""
from __future__ import annotations

import pytest
import torch

from tests.test_extension import needs_extension

# The floor added to the tolerance rule, by input dtype: absorbs errors at the level of one rounding.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_by_rule(out: torch.Tensor, truth: torch.Tensor, baseline: torch.Tensor, what: str = "") -> None:
    """FlashAttention's rule: the error of `out` against `truth` (a float64 computation) is at most twice the
    error of `baseline` (PyTorch computing the same thing in the input dtype), plus a small floor."""
    assert out.shape == truth.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert not out.isnan().any(), f"{what}: output holds NaN (an element was not written?)"
    err, base = max_error(out, truth), max_error(baseline, truth)
    bound = 2 * base + FLOOR[out.dtype]
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} (2 x PyTorch's {base:.3g} + floor)"


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as t in a non-contiguous layout (every other element of a wider buffer's last dim)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


# The kernel backends an op's tests run on: cuda's cases need a GPU and the built extension.
BACKEND_MARKS = {"triton": (), "cuda": (pytest.mark.gpu, needs_extension)}


def on_backend(backend: str, *values) -> pytest.param:
    """One case of a test parametrized (backend, *values), marked as its backend needs."""
    return pytest.param(backend, *values, marks=BACKEND_MARKS[backend])


BACKENDS = [on_backend(backend) for backend in BACKEND_MARKS]
