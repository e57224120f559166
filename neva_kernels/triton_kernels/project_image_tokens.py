"""project_image_tokens in Triton: two GEMMs with fused epilogues, the second writing into inputs_embeds.

hidden = GELU(x @ w1^T + b1) is the only intermediate that makes a round trip through memory; then
out = hidden @ w2^T + b2 is stored row by row straight into the image-token rows of inputs_embeds (row i of the
projection goes to the i-th set position of the mask, indices computed once with nonzero_static): no
masked_scatter, no concatenation, no extra copy. Both GEMMs are one kernel: fp32 accumulation, bias and GELU
(erf) applied to the accumulator, tiles walked in GROUP_M-row bands so that consecutive programs share weight
tiles in L2.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import backends, reference
from ..architecture import SM90, generation
from ._common import dot_precision, dtype_refusal, unit_stride
from .compute_bound_configs import gemm_configs

try:  # host-built TMA descriptors: triton >= 3.4 (the GPU machine's 3.6 has them)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


@triton.jit
def _linear_kernel(x, w, bias_ptr, out_ptr, rows_ptr, M, N, K, stride_xm, stride_wn, stride_om, m_bucket,
                   HAS_BIAS: tl.constexpr, GELU: tl.constexpr, SCATTER: tl.constexpr, TMA: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr):
    """out[rows[m]] = act(x[m] @ w^T + bias), with w [N, K] as nn.Linear stores it; rows[m] = m unless SCATTER.

    x and w are pointers, or with TMA tensor descriptors of [BLOCK_M, BLOCK_K] / [BLOCK_N, BLOCK_K] tiles.
    """
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    band = pid // (GROUP_M * tiles_n)
    first_m = band * GROUP_M
    band_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % (GROUP_M * tiles_n)) % band_rows
    tile_n = (pid % (GROUP_M * tiles_n)) // band_rows

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if TMA:
        # Hopper's tensor memory accelerator: one bulk copy per tile, zeros past the tensor's edges.
        for k in range(0, K, BLOCK_K):
            acc = tl.dot(x.load([tile_m * BLOCK_M, k]), w.load([tile_n * BLOCK_N, k]).T, acc,
                         input_precision=DOT_PRECISION)
    else:
        offs_k = tl.arange(0, BLOCK_K)
        # Rows and columns past the edge read row/column 0 instead of masking: their results are never stored.
        safe_m = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
        safe_n = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
        x_ptrs = x + safe_m[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w + safe_n[None, :] * stride_wn + offs_k[:, None]
        for k in range(0, K, BLOCK_K):
            x_tile = tl.load(x_ptrs, mask=offs_k[None, :] < K - k, other=0.0)
            w_tile = tl.load(w_ptrs, mask=offs_k[:, None] < K - k, other=0.0)
            acc = tl.dot(x_tile, w_tile, acc, input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    if SCATTER:
        out_rows = tl.load(rows_ptr + offs_m, mask=offs_m < M, other=0).to(tl.int64)
    else:
        out_rows = offs_m.to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _tile_shapes_of_the_config(nargs: dict) -> None:
    """Autotune pre-hook: the tensor descriptors carry the tile shape of the configuration about to run."""
    if TensorDescriptor is not None and isinstance(nargs["x"], TensorDescriptor):
        nargs["x"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
        nargs["w"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


@functools.cache
def _autotuned_linear(gen: str):
    tuned = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages,
                           pre_hook=_tile_shapes_of_the_config) for c in gemm_configs(gen)]
    return triton.autotune(configs=tuned, key=["m_bucket", "N", "K", "HAS_BIAS", "GELU", "SCATTER", "TMA"])(
        _linear_kernel)


def use_tma(*operands: torch.Tensor) -> bool:
    """Bulk tensor copies on sm90, where this Triton has host tensor descriptors and the operands meet their rules
    (16-byte aligned base and row stride)."""
    return TensorDescriptor is not None and generation(operands[0].device) == SM90 and all(
        t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 for t in operands)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, gelu: bool,
           rows: torch.Tensor | None = None) -> None:
    """out[rows[i]] (out[i] without rows) = act(x[i] @ w^T + bias), for x [M, K], w [N, K], out [*, N]."""
    (m, k), n = x.shape, w.shape[0]
    tma = use_tma(x, w)
    if tma:  # the pre-hook sets each configuration's tile shape; these are placeholders
        x_arg, w_arg = TensorDescriptor.from_tensor(x, [16, 16]), TensorDescriptor.from_tensor(w, [16, 16])
    else:
        x_arg, w_arg = x, w
    grid = (lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),))
    _autotuned_linear(generation(x.device))[grid](
        x_arg, w_arg, bias, out, rows, m, n, k, x.stride(0), w.stride(0), out.stride(0), triton.next_power_of_2(m),
        HAS_BIAS=bias is not None, GELU=gelu, SCATTER=rows is not None, TMA=tma, DOT_PRECISION=dot_precision(x.dtype))


def supports(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask) -> str | None:
    return dtype_refusal("project_image_tokens kernels", image_features.dtype, image_features.is_cuda)


@backends.register("project_image_tokens", "triton", supports=supports)
def project_image_tokens(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask) -> None:
    x = unit_stride(image_features.reshape(-1, image_features.shape[-1]))
    if x.shape[0] == 0:
        return
    w1, w2 = unit_stride(w1), unit_stride(w2)
    b1, b2 = (None if b is None else b.contiguous() for b in (b1, b2))
    hidden = torch.empty(x.shape[0], w1.shape[0], dtype=x.dtype, device=x.device)
    linear(x, w1, b1, hidden, gelu=True)
    rows = reference.image_token_rows(image_token_mask, x.shape[0])
    linear(hidden, w2, b2, inputs_embeds.view(-1, inputs_embeds.shape[-1]), gelu=False, rows=rows)
