"""The torch backend of the decode path's ops: the reference's maths in fewer PyTorch calls.

On a CPU (and on a GPU without a kernel for the call) a decode step runs these ops once per layer, where the
number of PyTorch calls, not the arithmetic, sets the time (benchmarks/host_overhead.py). Each function keeps
its reference's contract (same signature, float32 arithmetic for 16-bit inputs, float64 for float64, one
rounding to the input dtype at the end) and is tested against it (tests/kernels/test_torch_backend.py). Where a
case is rare, the reference itself runs rather than a second lean formulation of it.

None has data-dependent Python while torch.compile traces it, so a compiled decode step fuses them
(neva_kernels.ops._library: trace_torch_backend).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .reference import compute_dtype


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in `dtype`, without a call when it already is (a decode step would pay ~20 no-op casts per layer)."""
    return t if t.dtype == dtype else t.to(dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None):
    h = reference.residual_stream(x, residual)
    hf = _cast(h, compute_dtype(h))
    y = _cast(hf * torch.rsqrt(hf.square().mean(dim=-1, keepdim=True) + eps) * weight, x.dtype).contiguous()
    return y if residual is None else (y, h.contiguous())


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, residual: Tensor | None = None,
               zero_centered_weight: bool = False):
    h = reference.residual_stream(x, residual)
    hf = _cast(h, compute_dtype(h))
    scale = reference._norm_scale(weight, zero_centered_weight, hf.dtype)
    y = F.layer_norm(hf, hf.shape[-1:], scale, None if bias is None else _cast(bias, hf.dtype), eps)
    y = _cast(y, x.dtype)
    return y if residual is None else (y, h.contiguous())


def rotary_embedding(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor, interleaved: bool = False):
    """NeoX pairing: q and k rotated together (one set of calls for both), the features past rot_dim kept."""
    if interleaved:
        return reference.rotary_embedding(q, k, positions, cos_sin_cache, interleaved)
    cdt, q_heads, rot_dim = compute_dtype(q), q.shape[-2], cos_sin_cache.shape[1]
    cos, sin = _cast(cos_sin_cache[positions], cdt).unsqueeze(-2).chunk(2, dim=-1)
    qk = torch.cat((q, k), dim=-2)
    x1, x2 = _cast(qk[..., :rot_dim], cdt).chunk(2, dim=-1)
    rotated = _cast(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1), q.dtype)
    if rot_dim < q.shape[-1]:
        rotated = torch.cat((rotated, qk[..., rot_dim:]), dim=-1)
    return rotated[..., :q_heads, :].contiguous(), rotated[..., q_heads:, :].contiguous()


def _padding_free_writes(slot_mapping: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, slots): which row of k/v to write to which slot, padding rows (slot -1) included without a branch;
    real = slot_mapping >= 0.

    A padding row repeats the write of the first real row (the same value to the same slot, a harmless duplicate);
    when no row is real, slot 0 is rewritten with what it holds (see the caller). For torch.compile, which
    cannot branch on the data as the eager path does.
    """
    rows = torch.where(real, torch.arange(len(slot_mapping), device=slot_mapping.device),
                       real.to(torch.int8).argmax())
    return rows, slot_mapping[rows].clamp(min=0).long()


def append_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """One index_copy_ per cache."""
    flat_k, flat_v = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
    if not torch.compiler.is_compiling():
        if not bool((slot_mapping >= 0).all()):
            return reference.append_kv_cache(k, v, k_cache, v_cache, slot_mapping)
        slots = slot_mapping.long()
        flat_k.index_copy_(0, slots, _cast(k, k_cache.dtype))
        flat_v.index_copy_(0, slots, _cast(v, v_cache.dtype))
        return None
    real = slot_mapping >= 0
    rows, slots = _padding_free_writes(slot_mapping, real)
    any_real = real.any()
    flat_k.index_copy_(0, slots, torch.where(any_real, _cast(k[rows], k_cache.dtype), flat_k[slots]))
    flat_v.index_copy_(0, slots, torch.where(any_real, _cast(v[rows], v_cache.dtype), flat_v[slots]))
    return None


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                           softmax_scale: float) -> Tensor:
    """Each sequence's pages gathered whole, its query heads grouped over their shared K/V head (no repeat)."""
    _, block_size, kv_heads, head_dim = k_cache.shape
    batch, width = block_tables.shape
    cdt = compute_dtype(q)
    # Table entries past a sequence's length may hold anything: read block 0 there, masked out below.
    used = torch.arange(width, device=q.device) * block_size < seq_lens[:, None]
    pages = torch.where(used, block_tables, 0)
    keys = _cast(k_cache[pages].view(batch, width * block_size, kv_heads, head_dim), cdt).permute(0, 2, 3, 1)
    values = _cast(v_cache[pages].view(batch, width * block_size, kv_heads, head_dim), cdt).transpose(1, 2)
    scores = torch.matmul(_cast(q.reshape(batch, kv_heads, -1, head_dim), cdt), keys) * softmax_scale
    hidden = torch.arange(width * block_size, device=q.device) >= seq_lens[:, None]
    probs = torch.softmax(scores.masked_fill(hidden[:, None, None], -math.inf), dim=-1)
    out = torch.matmul(probs, values).view(q.shape)
    # A sequence of length 0 sees no key: its softmax is 0/0 = NaN, its output zeros as the contract says.
    return _cast(out.masked_fill((seq_lens == 0)[:, None, None], 0.0), q.dtype)


# op -> its lean implementation; the other ops' torch backend is the reference itself.
LEAN = {"rms_norm": rms_norm, "layer_norm": layer_norm, "rotary_embedding": rotary_embedding,
        "append_kv_cache": append_kv_cache, "paged_decode_attention": paged_decode_attention}
