"""rotary_embedding on Triton: one program per token rotates all its q and k heads with one cos/sin read."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import backends
from . import memory_bound_configs as configs
from ._common import unit_stride


@triton.jit
def _rotate_heads(x_ptr, out_ptr, token, token_stride, head_stride, num_heads, cos, sin, pairs, rot_dim,
                  HEAD_DIM: tl.constexpr, HEADS_TILE: tl.constexpr, PASS_TILE: tl.constexpr,
                  INTERLEAVED: tl.constexpr):
    """Rotate the first rot_dim features of x[token]'s heads into the contiguous out[token]; copy the rest."""
    heads = tl.arange(0, HEADS_TILE)[:, None]
    head_mask = heads < num_heads
    rot_half = rot_dim // 2
    if INTERLEAVED:  # GPT-J: pairs (2i, 2i + 1)
        first, second = 2 * pairs, 2 * pairs + 1
    else:  # NeoX / LLaMA: pairs (i, i + rot_dim / 2)
        first, second = pairs, pairs + rot_half
    mask = head_mask & (pairs < rot_half)
    src = x_ptr + token * token_stride + heads * head_stride
    dst = out_ptr + token * num_heads * HEAD_DIM + heads * HEAD_DIM
    x1 = tl.load(src + first, mask=mask).to(tl.float32)
    x2 = tl.load(src + second, mask=mask).to(tl.float32)
    tl.store(dst + first, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + second, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    if PASS_TILE > 0:  # features past rot_dim pass through unchanged
        rest = rot_dim + tl.arange(0, PASS_TILE)[None, :]
        rest_mask = head_mask & (rest < HEAD_DIM)
        tl.store(dst + rest, tl.load(src + rest, mask=rest_mask), mask=rest_mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, positions_ptr, cos_sin_ptr, q_out_ptr, k_out_ptr,
                   q_token_stride, q_head_stride, k_token_stride, k_head_stride, cos_sin_stride,
                   q_heads, k_heads, rot_dim,
                   HEAD_DIM: tl.constexpr, Q_HEADS_TILE: tl.constexpr, K_HEADS_TILE: tl.constexpr,
                   PAIRS_TILE: tl.constexpr, PASS_TILE: tl.constexpr, INTERLEAVED: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    pairs = tl.arange(0, PAIRS_TILE)[None, :]
    pair_mask = pairs < rot_dim // 2
    row = cos_sin_ptr + position * cos_sin_stride  # cos in the first rot_dim / 2 columns, sin in the rest
    cos = tl.load(row + pairs, mask=pair_mask).to(tl.float32)
    sin = tl.load(row + rot_dim // 2 + pairs, mask=pair_mask).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, token, q_token_stride, q_head_stride, q_heads, cos, sin, pairs, rot_dim,
                  HEAD_DIM, Q_HEADS_TILE, PASS_TILE, INTERLEAVED)
    _rotate_heads(k_ptr, k_out_ptr, token, k_token_stride, k_head_stride, k_heads, cos, sin, pairs, rot_dim,
                  HEAD_DIM, K_HEADS_TILE, PASS_TILE, INTERLEAVED)


def _tokens(x: Tensor) -> Tensor:
    """x [..., H, D] as [tokens, H, D] with unit stride along D (a copy only when it cannot be a view)."""
    return unit_stride(x.reshape(-1, *x.shape[-2:]))


@backends.register("rotary_embedding", "triton")
def rotary_embedding(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor, interleaved: bool = False):
    head_dim, rot_dim = q.shape[-1], cos_sin_cache.shape[1]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    q_rows, k_rows, positions = _tokens(q), _tokens(k), positions.reshape(-1).contiguous()
    if positions.numel() == 0:
        return q_out, k_out
    cos_sin_cache = unit_stride(cos_sin_cache)
    q_heads, k_heads = q_rows.shape[1], k_rows.shape[1]
    launch = configs.per_token_launch((q_heads + k_heads) * head_dim)
    _rotary_kernel[(positions.numel(),)](
        q_rows, k_rows, positions, cos_sin_cache, q_out, k_out, q_rows.stride(0), q_rows.stride(1),
        k_rows.stride(0), k_rows.stride(1), cos_sin_cache.stride(0), q_heads, k_heads, rot_dim,
        HEAD_DIM=head_dim, Q_HEADS_TILE=triton.next_power_of_2(q_heads), K_HEADS_TILE=triton.next_power_of_2(k_heads),
        PAIRS_TILE=triton.next_power_of_2(rot_dim // 2),
        PASS_TILE=0 if rot_dim == head_dim else triton.next_power_of_2(head_dim - rot_dim),
        INTERLEAVED=interleaved, num_warps=launch.num_warps)
    return q_out, k_out
