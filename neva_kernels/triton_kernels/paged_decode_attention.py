"""paged_decode_attention on Triton: one query token per sequence over its pages, flash-decoding style.

One program serves all query heads of one KV head (GQA: each K/V page is read once per KV head, the group's
queries form the rows of one tensor-core tile) over one slice of the context. When batch x KV heads programs
would leave SMs idle, the context is split across programs ("split-KV"); each split writes its normalized
partial output and log-sum-exp, and a second small kernel merges them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import backends
from ..checks import starts_aligned
from . import memory_bound_configs as configs
from ._common import LOG2E, dot_precision, unit_stride

OP = "paged_decode_attention"

# Query heads sharing one KV head form the M dimension of a tl.dot, which must be at least 16.
GROUP_TILE = 16


@triton.jit
def _paged_decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr, partial_lse_ptr,
                         q_batch_stride, q_head_stride, block_table_stride, kv_heads, block_size, group,
                         tokens_per_split, scale_log2,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_TILE: tl.constexpr, GROUP_TILE: tl.constexpr,
                         TILE_TOKENS: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Grid (batch, kv_heads, splits). Unsplit: out is [B, Hq, D] in q's dtype. Split: out is the fp32
    [B, Hq, splits, D] of normalized partial outputs and partial_lse [B, Hq, splits] their log2-sum-exp2."""
    batch, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_splits = tl.num_programs(2)
    seq_len = tl.load(seq_lens_ptr + batch)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)

    heads = tl.arange(0, GROUP_TILE)
    dims = tl.arange(0, HEAD_DIM_TILE)
    head_mask, dim_mask = heads < group, dims < HEAD_DIM
    q_heads = kv_head * group + heads
    q = tl.load(q_ptr + batch.to(tl.int64) * q_batch_stride + q_heads[:, None] * q_head_stride + dims[None, :],
                mask=head_mask[:, None] & dim_mask[None, :], other=0.0)

    running_max = tl.full([GROUP_TILE], -float("inf"), dtype=tl.float32)
    running_sum = tl.zeros([GROUP_TILE], dtype=tl.float32)
    acc = tl.zeros([GROUP_TILE, HEAD_DIM_TILE], dtype=tl.float32)
    table_row = block_tables_ptr + batch.to(tl.int64) * block_table_stride
    tile = tl.arange(0, TILE_TOKENS)
    # Every tile holds at least one of this split's tokens, so running_max is finite after the first one.
    for tile_start in range(start, end, TILE_TOKENS):
        tokens = tile_start + tile
        token_mask = tokens < end
        page = tl.load(table_row + tokens // block_size, mask=token_mask, other=0).to(tl.int64)
        rows = ((page * block_size + tokens % block_size) * kv_heads + kv_head) * HEAD_DIM
        kv_mask = token_mask[:, None] & dim_mask[None, :]
        # Each cached row starts 16-byte aligned (checked by the wrapper): vector loads, whatever the strides.
        k_ptrs = tl.multiple_of(k_cache_ptr + rows[:, None] + dims[None, :], [16, 16])
        v_ptrs = tl.multiple_of(v_cache_ptr + rows[:, None] + dims[None, :], [16, 16])
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        scores = tl.where(token_mask[None, :], scores, -float("inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp2(running_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        running_max = new_max

    # An empty split (or seq_len 0) has running_sum 0: its output is 0 and its log-sum-exp -inf.
    has_keys = running_sum > 0
    acc = acc / tl.where(has_keys, running_sum, 1.0)[:, None]
    out_mask = head_mask[:, None] & dim_mask[None, :]
    row = batch.to(tl.int64) * (kv_heads * group) + q_heads  # flat (batch, query head) index
    if SPLIT:
        tl.store(out_ptr + ((row * num_splits + split) * HEAD_DIM)[:, None] + dims[None, :], acc, mask=out_mask)
        lse = tl.where(has_keys, running_max + tl.log2(tl.where(has_keys, running_sum, 1.0)), -float("inf"))
        tl.store(partial_lse_ptr + row * num_splits + split, lse, mask=head_mask)
    else:
        tl.store(out_ptr + (row * HEAD_DIM)[:, None] + dims[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _merge_splits_kernel(partial_out_ptr, partial_lse_ptr, out_ptr, num_splits,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_TILE: tl.constexpr, MAX_SPLITS: tl.constexpr):
    """Grid (batch * Hq,): out = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max); all splits empty gives 0."""
    row = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, MAX_SPLITS)
    lse = tl.load(partial_lse_ptr + row * num_splits + splits, mask=splits < num_splits, other=-float("inf"))
    top = tl.max(lse, axis=0)
    safe_top = tl.where(top == -float("inf"), 0.0, top)  # all splits empty: every weight is 2^-inf = 0
    total = tl.sum(tl.exp2(lse - safe_top), axis=0)
    dims = tl.arange(0, HEAD_DIM_TILE)
    dim_mask = dims < HEAD_DIM
    acc = tl.zeros([HEAD_DIM_TILE], dtype=tl.float32)
    for split in range(0, num_splits):
        weight = tl.exp2(tl.load(partial_lse_ptr + row * num_splits + split) - safe_top)
        partial = tl.load(partial_out_ptr + (row * num_splits + split) * HEAD_DIM + dims, mask=dim_mask, other=0.0)
        acc += weight * partial
    acc = acc / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + row * HEAD_DIM + dims, acc.to(out_ptr.dtype.element_ty), mask=dim_mask)


def _supports(q: Tensor, k_cache: Tensor, v_cache: Tensor, *_) -> str | None:
    head_dim, group = q.shape[-1], q.shape[1] // k_cache.shape[2]
    if head_dim > configs.DECODE_MAX_HEAD_DIM:
        return f"the triton paged decode handles head_dim <= {configs.DECODE_MAX_HEAD_DIM}, got {head_dim}"
    if group > GROUP_TILE:
        return f"the triton paged decode serves at most {GROUP_TILE} query heads per KV head, got {group}"
    if head_dim * k_cache.element_size() % 16:
        return f"the triton paged decode reads 16-byte vectors: head_dim {head_dim} x {k_cache.element_size()} bytes " \
               "is not a multiple of 16"
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not starts_aligned(cache):
            return f"the triton paged decode reads 16-byte vectors: '{name}' must start 16-byte aligned"
    return None


def paged_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                 softmax_scale: float, num_splits: int | None = None) -> Tensor:
    """The triton implementation; `num_splits` overrides the heuristic (tests force both paths with it)."""
    batch, q_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    q, block_tables = unit_stride(q), unit_stride(block_tables)
    config = configs.decode_config(head_dim, configs.arch_of(q.device))
    max_context = block_tables.shape[1] * block_size  # known on the host: no device sync to read seq_lens
    if num_splits is None:
        num_splits = configs.decode_num_splits(batch, kv_heads, max_context, head_dim, q.device)
    num_splits = max(1, min(num_splits, configs.DECODE_MAX_SPLITS, triton.cdiv(max_context, config.tile_tokens)))
    tokens_per_split = triton.cdiv(triton.cdiv(max_context, num_splits), config.tile_tokens) * config.tile_tokens
    num_splits = triton.cdiv(max_context, tokens_per_split)
    split = num_splits > 1
    if split:
        partial_out = torch.empty(batch, q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        partial_lse = torch.empty(batch, q_heads, num_splits, dtype=torch.float32, device=q.device)
    head_dim_tile = configs.decode_head_dim_tile(head_dim)
    _paged_decode_kernel[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, partial_out if split else out, partial_lse if split else out,
        q.stride(0), q.stride(1), block_tables.stride(0), kv_heads, block_size, q_heads // kv_heads,
        tokens_per_split, softmax_scale * LOG2E,
        HEAD_DIM=head_dim, HEAD_DIM_TILE=head_dim_tile, GROUP_TILE=GROUP_TILE, TILE_TOKENS=config.tile_tokens,
        SPLIT=split, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages)
    if split:
        _merge_splits_kernel[(batch * q_heads,)](
            partial_out, partial_lse, out, num_splits, HEAD_DIM=head_dim, HEAD_DIM_TILE=head_dim_tile,
            MAX_SPLITS=configs.DECODE_MAX_SPLITS, num_warps=configs.per_token_launch(head_dim).num_warps)
    return out


@backends.register(OP, "triton", supports=_supports)
def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                           softmax_scale: float) -> Tensor:
    return paged_decode(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)
