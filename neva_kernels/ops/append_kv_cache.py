"""append_kv_cache: write the new tokens' keys and values into their slots of the paged cache, in place."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from ..checks import (INDEX_DTYPES, expect_index_range, expect_same_device, expect_same_dtype, expect_shape,
                      expect_tensor, value_checks_enabled)
from ._library import define
from .paged_decode_attention import expect_kv_cache

OP = "append_kv_cache"


@define("append_kv_cache", mutates_args=("k_cache", "v_cache"), trace_torch_backend=True)
def _append_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                     backend: str) -> None:
    if value_checks_enabled(k):
        expect_index_range(OP, "slot_mapping", slot_mapping, -1, k_cache.shape[0] * k_cache.shape[1])
    backends.implementation(OP, backend)(k, v, k_cache, v_cache, slot_mapping)


@torch.library.register_fake(_append_kv_cache.overload)
def _(k, v, k_cache, v_cache, slot_mapping, backend):
    return None


def append_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, *,
                    backend: str | None = None) -> None:
    """Copy k[i], v[i] ([num_tokens, Hkv, D]) into slot slot_mapping[i] of k_cache / v_cache, in place.

    A slot is block * block_size + offset (see neva_kernels.paged_cache); slot -1 marks a padding token that
    is skipped. slot_mapping is int32 or int64 [num_tokens].
    """
    expect_tensor(OP, "k", k, ndim=3)
    expect_tensor(OP, "v", v, ndim=3)
    expect_kv_cache(OP, k_cache, v_cache)
    expect_shape(OP, "k", k, [None, *k_cache.shape[2:]], "([num_tokens, num_kv_heads, head_dim] of the cache)")
    expect_shape(OP, "v", v, list(k.shape), "(the shape of k)")
    expect_same_dtype(OP, k=k, v=v, k_cache=k_cache)
    expect_tensor(OP, "slot_mapping", slot_mapping, dtypes=INDEX_DTYPES, ndim=1)
    expect_shape(OP, "slot_mapping", slot_mapping, [k.shape[0]], "(one slot per token of k)")
    expect_same_device(OP, k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    args = (k, v, k_cache, v_cache, slot_mapping)
    _append_kv_cache(*args, backends.choose(OP, k.device, args, backend))
