"""paged_decode_attention: one new query token per sequence attending over its paged KV cache."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import backends
from ..checks import (expect, expect_contiguous, expect_index_range, expect_same_device, expect_same_dtype,
                      expect_shape, expect_tensor, value_checks_enabled)
from ._library import define

OP = "paged_decode_attention"


def expect_kv_cache(op: str, k_cache: Tensor, v_cache: Tensor) -> None:
    """k_cache/v_cache: contiguous [num_blocks, block_size, num_kv_heads, head_dim] of one float dtype."""
    expect_tensor(op, "k_cache", k_cache, ndim=4)
    expect_tensor(op, "v_cache", v_cache, ndim=4)
    expect_shape(op, "v_cache", v_cache, list(k_cache.shape), "(the shape of k_cache)")
    expect_same_dtype(op, k_cache=k_cache, v_cache=v_cache)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        expect_contiguous(op, name, cache, "[num_blocks, block_size, num_kv_heads, head_dim] pages are indexed in place")
    expect(all(s > 0 for s in k_cache.shape), op,
           lambda: f"'k_cache' must have no empty dimension, got {list(k_cache.shape)}")


def _check_values(block_tables: Tensor, seq_lens: Tensor, num_blocks: int, block_size: int) -> None:
    """seq_lens fit the table, and every block a sequence uses is a real block."""
    expect_index_range(OP, "seq_lens", seq_lens, 0, block_tables.shape[1] * block_size + 1)
    used = torch.arange(block_tables.shape[1], device=block_tables.device)[None] * block_size < seq_lens[:, None]
    expect_index_range(OP, "block_tables (blocks in use)", block_tables[used], 0, num_blocks)


@define("paged_decode_attention", trace_torch_backend=True)
def _paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                            softmax_scale: float, backend: str) -> Tensor:
    if value_checks_enabled(q):
        _check_values(block_tables, seq_lens, k_cache.shape[0], k_cache.shape[1])
    return backends.implementation(OP, backend)(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale)


@torch.library.register_fake(_paged_decode_attention.overload)
def _(q, k_cache, v_cache, block_tables, seq_lens, softmax_scale, backend):
    return q.new_empty(q.shape)


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                           softmax_scale: float | None = None, *, backend: str | None = None) -> Tensor:
    """Attention of q [B, Hq, D] (one token per sequence) over each sequence's first seq_lens[b] cached tokens.

    Caches are [num_blocks, block_size, Hkv, D] (vLLM / FlashAttention layout); block_tables [B, max_blocks]
    int32 maps a sequence's t-th token to block block_tables[b, t // block_size]; seq_lens [B] int32.
    Table entries past a sequence's length are not read. A sequence of length 0 gets zeros. Returns [B, Hq, D].
    """
    expect_tensor(OP, "q", q, ndim=3)
    expect_kv_cache(OP, k_cache, v_cache)
    expect_same_dtype(OP, q=q, k_cache=k_cache)
    batch, q_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    expect_shape(OP, "k_cache", k_cache, [None, None, None, head_dim], "(head_dim of q)")
    expect(q_heads % kv_heads == 0, OP,
           lambda: f"the query heads of 'q' ({q_heads}) must be a multiple of the key/value heads of 'k_cache' "
                   f"({kv_heads})")
    expect_tensor(OP, "block_tables", block_tables, dtypes=(torch.int32,), ndim=2)
    expect_shape(OP, "block_tables", block_tables, [batch, None], "(one row per sequence of q)")
    expect_tensor(OP, "seq_lens", seq_lens, dtypes=(torch.int32,), ndim=1)
    expect_shape(OP, "seq_lens", seq_lens, [batch], "(one length per sequence of q)")
    expect_same_device(OP, q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    expect(isinstance(softmax_scale, (int, float)) and softmax_scale > 0, OP,
           lambda: f"'softmax_scale' must be a number > 0, got {softmax_scale!r}")
    args = (q, k_cache, v_cache, block_tables, seq_lens, float(softmax_scale))
    return _paged_decode_attention(*args, backends.choose(OP, q.device, args, backend))
