"""flash_attention: exact softmax attention, causal or not, GQA/MQA, padded or packed variable-length batches."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import backends
from ..checks import (INDEX_DTYPES, expect, expect_index_range, expect_same_device, expect_same_dtype, expect_shape,
                      expect_tensor, value_checks_enabled)
from ..reference import compute_dtype, lse_shape
from ._library import define

OP = "flash_attention"
MAX_HEAD_DIM = 256


def _check_cu_seqlens(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, total_q: int, total_k: int,
                      max_seqlen_q: int | None, max_seqlen_k: int | None) -> None:
    """Offsets start at 0, never decrease, end at the token count, and fit the stated maximum lengths."""
    for name, cu, total, max_len in (("cu_seqlens_q", cu_seqlens_q, total_q, max_seqlen_q),
                                     ("cu_seqlens_k", cu_seqlens_k, total_k, max_seqlen_k)):
        lengths = cu[1:] - cu[:-1]
        first, last = int(cu[0]), int(cu[-1])
        expect(first == 0 and last == total, OP,
               lambda: f"'{name}' must start at 0 and end at the token count {total}, got {first} .. {last}")
        expect_index_range(OP, f"{name} lengths", lengths, 0, (max_len if max_len is not None else total) + 1)


@define("flash_attention")
def _flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float,
                     cu_seqlens_q: Tensor | None, cu_seqlens_k: Tensor | None, max_seqlen_q: int | None,
                     max_seqlen_k: int | None, backend: str) -> tuple[Tensor, Tensor]:
    if cu_seqlens_q is not None and value_checks_enabled(q):
        _check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)
    return backends.implementation(OP, backend)(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k,
                                                max_seqlen_q, max_seqlen_k)


@torch.library.register_fake(_flash_attention.overload)
def _(q, k, v, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, backend):
    return q.new_empty(q.shape), q.new_empty(lse_shape(q, packed=cu_seqlens_q is not None), dtype=compute_dtype(q))


@define("flash_attention_backward")
def _flash_attention_backward(grad_out: Tensor, grad_lse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                              lse: Tensor, causal: bool, softmax_scale: float, cu_seqlens_q: Tensor | None,
                              cu_seqlens_k: Tensor | None, max_seqlen_q: int | None, max_seqlen_k: int | None,
                              backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return backends.implementation("flash_attention_backward", backend)(
        grad_out, grad_lse, q, k, v, out, lse, causal, softmax_scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k)


@torch.library.register_fake(_flash_attention_backward.overload)
def _(grad_out, grad_lse, q, k, v, out, lse, *rest):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save_for_backward(ctx, inputs, output):
    q, k, v, causal, scale, cu_q, cu_k, max_q, max_k, backend = inputs
    ctx.save_for_backward(q, k, v, *output, cu_q, cu_k)  # FlashAttention-2: out and lse, never the probabilities
    ctx.constants = (causal, scale)
    ctx.max_seqlens = (max_q, max_k)
    ctx.backend = backend


def _flash_attention_grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    args = (grad_out, grad_lse, q, k, v, out, lse, *ctx.constants, cu_q, cu_k, *ctx.max_seqlens)
    backend = backends.choose_backward("flash_attention_backward", ctx.backend, q.device, args)
    grad_q, grad_k, grad_v = _flash_attention_backward(*args, backend)
    return grad_q, grad_k, grad_v, None, None, None, None, None, None, None


torch.library.register_autograd(_flash_attention.overload, _flash_attention_grad, setup_context=_save_for_backward)


def _check_layout(q: Tensor, k: Tensor, v: Tensor, packed: bool) -> None:
    rank = 3 if packed else 4
    layout = "[total_tokens, heads, head_dim] (packed, with cu_seqlens)" if packed else "[batch, seq, heads, head_dim]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        expect_tensor(OP, name, t)
        expect(t.dim() == rank, OP, lambda: f"'{name}' must be {layout}, got shape {list(t.shape)}")
    expect_same_dtype(OP, q=q, k=k, v=v)
    head_dim, kv_heads = q.shape[-1], k.shape[-2]
    expect(1 <= head_dim <= MAX_HEAD_DIM, OP, lambda: f"head_dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    batch = [] if packed else [q.shape[0]]
    expect_shape(OP, "k", k, batch + [None, None, head_dim], "(batch and head_dim of q)")
    expect_shape(OP, "v", v, list(k.shape), "(the shape of k)")
    expect(kv_heads > 0 and q.shape[-2] % kv_heads == 0, OP,
           lambda: f"the query heads of 'q' ({q.shape[-2]}) must be a multiple of the key/value heads of 'k' "
                   f"({kv_heads})")


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, softmax_scale: float | None = None,
                    cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
                    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, return_lse: bool = False, *,
                    backend: str | None = None):
    """softmax(q k^T * softmax_scale) v, per sequence and head.

    Layouts: padded q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]; or packed q [total_q, Hq, D], k/v [total_k, Hkv, D]
    with int32 offsets cu_seqlens_q/k [B + 1] (sequence i is rows cu[i]:cu[i+1]). Hq must be a multiple of Hkv
    (GQA/MQA: query head h reads key/value head h // (Hq / Hkv)). softmax_scale defaults to 1/sqrt(D).
    causal masks bottom-right aligned (query i sees keys j <= i + Sk - Sq, as FlashAttention >= 2.1); a query
    that sees no key gets zeros. Returns out (like q), and with return_lse also the log-sum-exp of the scaled
    scores (float32; float64 for float64 inputs): [B, Hq, Sq] padded, [Hq, total_q] packed.
    """
    packed = cu_seqlens_q is not None or cu_seqlens_k is not None
    expect(cu_seqlens_q is not None or not packed, OP, "'cu_seqlens_q' and 'cu_seqlens_k' must be given together")
    expect(cu_seqlens_k is not None or not packed, OP, "'cu_seqlens_q' and 'cu_seqlens_k' must be given together")
    _check_layout(q, k, v, packed)
    if packed:
        expect_tensor(OP, "cu_seqlens_q", cu_seqlens_q, dtypes=INDEX_DTYPES[:1], ndim=1)
        expect_tensor(OP, "cu_seqlens_k", cu_seqlens_k, dtypes=INDEX_DTYPES[:1], ndim=1)
        expect(cu_seqlens_q.shape[0] >= 1, OP, "'cu_seqlens_q' must hold at least the leading 0")
        expect_shape(OP, "cu_seqlens_k", cu_seqlens_k, list(cu_seqlens_q.shape), "(batch + 1, like cu_seqlens_q)")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        expect(value is None or (isinstance(value, int) and value >= 0), OP,
               lambda: f"'{name}' must be None or an int >= 0, got {value!r}")
    expect_same_device(OP, q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    expect(isinstance(softmax_scale, (int, float)) and softmax_scale > 0, OP,
           lambda: f"'softmax_scale' must be a number > 0, got {softmax_scale!r}")
    args = (q, k, v, bool(causal), float(softmax_scale), cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    out, lse = _flash_attention(*args, backends.choose(OP, q.device, args, backend))
    return (out, lse) if return_lse else out
