"""What rms_norm and layer_norm share: the argument checks of a per-row norm with an optional fused residual."""
from __future__ import annotations

from torch import Tensor

from ..checks import expect, expect_same_device, expect_same_dtype, expect_shape, expect_tensor


def check_row_norm_args(op: str, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None,
                        bias: Tensor | None = None) -> None:
    """x [..., hidden] non-empty along hidden; weight (and bias) [hidden]; residual like x; one dtype, one device."""
    expect_tensor(op, "x", x)
    expect(x.dim() >= 1 and x.shape[-1] > 0, op,
           lambda: f"'x' must have a non-empty last dimension, got shape {list(x.shape)}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            expect_tensor(op, name, param, ndim=1)
            expect_shape(op, name, param, [x.shape[-1]], "(the last dimension of x)")
    expect(isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0, op,
           lambda: f"'eps' must be a number >= 0, got {eps!r}")
    if residual is not None:
        expect_tensor(op, "residual", residual)
        expect_shape(op, "residual", residual, list(x.shape), "(the shape of x)")
    expect_same_dtype(op, x=x, weight=weight, bias=bias, residual=residual)
    expect_same_device(op, x=x, weight=weight, bias=bias, residual=residual)
