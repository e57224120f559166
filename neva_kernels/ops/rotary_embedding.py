"""rotary_embedding: rotate q and k by their positions (RoPE), NeoX or interleaved (GPT-J) pairing."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends, reference
from ..checks import (FLOAT_DTYPES, INDEX_DTYPES, expect, expect_index_range, expect_same_device, expect_same_dtype,
                      expect_shape, expect_tensor, value_checks_enabled)
from ._autograd import register_recompute_autograd
from ._library import define

OP = "rotary_embedding"


@define("rotary_embedding", trace_torch_backend=True)
def _rotary_embedding(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor, interleaved: bool,
                      backend: str) -> tuple[Tensor, Tensor]:
    if value_checks_enabled(q):
        expect_index_range(OP, "positions", positions, 0, cos_sin_cache.shape[0])
    return backends.implementation(OP, backend)(q, k, positions, cos_sin_cache, interleaved)


@torch.library.register_fake(_rotary_embedding.overload)
def _(q, k, positions, cos_sin_cache, interleaved, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape)


register_recompute_autograd(_rotary_embedding.overload, reference.rotary_embedding)


def rotary_embedding(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor, interleaved: bool = False, *,
                     backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Return (q, k) rotated: q [..., Hq, D] and k [..., Hkv, D] share the leading dims of positions [...].

    cos_sin_cache [max_position, rot_dim] (float, any precision) holds cos in its first rot_dim / 2 columns
    and sin in the rest (``reference.rotary_cos_sin_cache`` builds LLaMA's). The first rot_dim features of
    each head rotate (NeoX pairs i with i + rot_dim/2; interleaved pairs 2i with 2i+1); the rest pass through.
    """
    expect_tensor(OP, "q", q, ndim=range(2, 8))
    expect_tensor(OP, "k", k, ndim=q.dim())
    expect_same_dtype(OP, q=q, k=k)
    lead = list(q.shape[:-2])
    expect_shape(OP, "k", k, lead + [None, q.shape[-1]], "(the leading dims and head_dim of q)")
    expect_tensor(OP, "positions", positions, dtypes=INDEX_DTYPES, ndim=len(lead))
    expect_shape(OP, "positions", positions, lead, "(the leading dims of q)")
    expect_tensor(OP, "cos_sin_cache", cos_sin_cache, dtypes=FLOAT_DTYPES, ndim=2)
    rot_dim = cos_sin_cache.shape[1]
    expect(rot_dim % 2 == 0 and 0 < rot_dim <= q.shape[-1], OP,
           lambda: f"'cos_sin_cache' must have an even number of columns (rot_dim) in 2..head_dim={q.shape[-1]}, "
           f"got {rot_dim}")
    expect_same_device(OP, q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)
    args = (q, k, positions, cos_sin_cache, bool(interleaved))
    return _rotary_embedding(*args, backends.choose(OP, q.device, args, backend))
