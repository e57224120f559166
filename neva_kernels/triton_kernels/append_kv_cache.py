"""append_kv_cache on Triton: one program per new token copies its K and V [Hkv, D] into its cache slot."""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .. import backends
from . import memory_bound_configs as configs
from ._common import unit_stride


@triton.jit
def _append_kv_cache_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                            k_token_stride, k_head_stride, v_token_stride, v_head_stride, kv_heads,
                            HEAD_DIM: tl.constexpr, HEADS_TILE: tl.constexpr, HEAD_DIM_TILE: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:  # slot -1: a padding token, nothing to write
        heads = tl.arange(0, HEADS_TILE)[:, None]
        dims = tl.arange(0, HEAD_DIM_TILE)[None, :]
        mask = (heads < kv_heads) & (dims < HEAD_DIM)
        cache_offsets = slot * kv_heads * HEAD_DIM + heads * HEAD_DIM + dims  # slot = block * block_size + offset
        k = tl.load(k_ptr + token * k_token_stride + heads * k_head_stride + dims, mask=mask)
        tl.store(k_cache_ptr + cache_offsets, k, mask=mask)
        v = tl.load(v_ptr + token * v_token_stride + heads * v_head_stride + dims, mask=mask)
        tl.store(v_cache_ptr + cache_offsets, v, mask=mask)


@backends.register("append_kv_cache", "triton")
def append_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    num_tokens, kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k, v, slot_mapping = unit_stride(k), unit_stride(v), slot_mapping.contiguous()
    launch = configs.per_token_launch(kv_heads * head_dim)
    _append_kv_cache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1), kv_heads,
        HEAD_DIM=head_dim, HEADS_TILE=triton.next_power_of_2(kv_heads),
        HEAD_DIM_TILE=triton.next_power_of_2(head_dim), num_warps=launch.num_warps)
