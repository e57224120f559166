"""The per-row norms on Triton, rms_norm and layer_norm in one kernel pair: one row per program in one pass over
memory, optionally fused with the residual add; and the backward (grad_h per row, grad_weight as per-program
partial sums reduced afterwards; layer_norm's grad_bias, the column sums of grad_y, by torch: a fifth row in
registers made the kernel spill at hidden 8192). CENTER subtracts the row mean (LayerNorm); without it the row is
divided by its root mean square (RMSNorm)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import memory_bound_configs as configs


@triton.jit
def _row_norm_kernel(x_ptr, residual_ptr, weight_ptr, bias_ptr, y_ptr, h_ptr, x_row_stride, residual_row_stride,
                     hidden, eps, HAS_RESIDUAL: tl.constexpr, CENTER: tl.constexpr, HAS_BIAS: tl.constexpr,
                     ZERO_CENTERED_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    h = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0)
        # Rounded to the input dtype before normalizing: the residual stream an unfused model would carry.
        h = (h.to(tl.float32) + residual.to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * hidden + cols, h, mask=mask)
    h = h.to(tl.float32)
    if CENTER:
        h = tl.where(mask, h - tl.sum(h, axis=0) / hidden, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if ZERO_CENTERED_WEIGHT:
        weight += 1.0
    y = h * rstd * weight
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_norm_backward_kernel(grad_y_ptr, h_ptr, weight_ptr, grad_h_ptr, partial_grad_weight_ptr, rows,
                              grad_y_row_stride, h_row_stride, hidden, eps, rows_per_program, CENTER: tl.constexpr,
                              ZERO_CENTERED_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    """grad_h = r * (g - [mean(g)] - n * mean(g * n)) with g = grad_y * weight, n = normalized h (the bracket only
    with CENTER); this program's rows' sum of grad_y * n goes to its own row of partial_grad_weight (no atomics:
    the sum order is fixed)."""
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if ZERO_CENTERED_WEIGHT:
        weight = tl.where(mask, weight + 1.0, 0.0)
    grad_weight = tl.zeros([BLOCK], dtype=tl.float32)
    first = program * rows_per_program
    # Pointers advance row by row (64-bit arithmetic, whatever the tensor size).
    grad_y_ptr += first.to(tl.int64) * grad_y_row_stride
    h_ptr += first.to(tl.int64) * h_row_stride
    grad_h_ptr += first.to(tl.int64) * hidden
    for _ in range(first, tl.minimum(first + rows_per_program, rows)):
        grad_y = tl.load(grad_y_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if CENTER:
            h = tl.where(mask, h - tl.sum(h, axis=0) / hidden, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
        normalized = h * rstd
        g = grad_y * weight
        correction = normalized * (tl.sum(g * normalized, axis=0) / hidden)
        if CENTER:
            correction += tl.sum(g, axis=0) / hidden
        tl.store(grad_h_ptr + cols, (rstd * (g - correction)).to(grad_h_ptr.dtype.element_ty), mask=mask)
        grad_weight += grad_y * normalized
        grad_y_ptr += grad_y_row_stride
        h_ptr += h_row_stride
        grad_h_ptr += hidden
    tl.store(partial_grad_weight_ptr + program.to(tl.int64) * hidden + cols, grad_weight, mask=mask)


def _rows(t: Tensor) -> Tensor:
    """t as [rows, hidden] with unit stride along hidden (a copy only when the last dim is strided)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def row_fits(hidden: int, limit: int) -> str | None:
    if hidden > limit:
        return f"the triton kernel holds a row in registers: hidden size {hidden} > {limit}"
    return None


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, residual: Tensor | None, center: bool,
            zero_centered_weight: bool):
    """y, or (y, h) with a residual: the rms_norm (center=False) or layer_norm (center=True) of x [..., hidden]."""
    hidden = x.shape[-1]
    x_rows, weight = _rows(x), weight.contiguous()
    residual_rows = x_rows if residual is None else _rows(residual)
    bias = weight if bias is None else bias.contiguous()  # never read without HAS_BIAS
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = y if residual is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x_rows.shape[0] > 0:
        block = configs.row_norm_block(hidden)
        launch = configs.row_norm_launch(block, configs.arch_of(x.device))
        _row_norm_kernel[(x_rows.shape[0],)](
            x_rows, residual_rows, weight, bias, y, h, x_rows.stride(0), residual_rows.stride(0), hidden, eps,
            HAS_RESIDUAL=residual is not None, CENTER=center, HAS_BIAS=bias is not weight,
            ZERO_CENTERED_WEIGHT=zero_centered_weight, BLOCK=block, num_warps=launch.num_warps)
    return y if residual is None else (y, h)


def backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float, center: bool, zero_centered_weight: bool):
    """(grad_h, grad_weight, grad_bias): grad_bias only with center (layer_norm), else None."""
    hidden = h.shape[-1]
    grad_y_rows, h_rows, weight = _rows(grad_y), _rows(h), weight.contiguous()
    rows = h_rows.shape[0]
    grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    rows_per_program = configs.row_norm_backward_rows_per_program(rows, h.device)
    programs = triton.cdiv(rows, rows_per_program)
    partial_grad_weight = torch.empty(programs, hidden, dtype=torch.float32, device=h.device)
    if rows > 0:
        block = configs.row_norm_block(hidden)
        launch = configs.row_norm_launch(block, configs.arch_of(h.device))
        _row_norm_backward_kernel[(programs,)](
            grad_y_rows, h_rows, weight, grad_h, partial_grad_weight, rows,
            grad_y_rows.stride(0), h_rows.stride(0), hidden, eps, rows_per_program, CENTER=center,
            ZERO_CENTERED_WEIGHT=zero_centered_weight, BLOCK=block, num_warps=launch.num_warps)
    grad_bias = torch.sum(grad_y_rows, dim=0, dtype=torch.float32).to(weight.dtype) if center else None
    return grad_h, partial_grad_weight.sum(dim=0).to(weight.dtype), grad_bias
