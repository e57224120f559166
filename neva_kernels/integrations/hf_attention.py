"""The "neva" attention of transformers' AttentionInterface: neva_kernels.flash_attention behind HF's calling convention.

transformers builds the mask once per forward with the function registered for "neva" in its AttentionMaskInterface
(`attention_mask` here) and hands it to every attention call (`attention_forward` here). The mask is None or a 2D
[batch, keys] padding mask (FlashAttention's format), so a padded batch is unpadded into a packed variable-length
batch and attended exactly. Patterns that are neither causal nor full (a sliding window that cuts into the keys,
packed sequences in one row, token-type overlays, chunked attention) are refused, never approximated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.masking_utils import (bidirectional_mask_function, causal_mask_function, flash_attention_mask,
                                        sdpa_mask)

import neva_kernels as nk
from neva_kernels.checks import expect

OP = "neva attention"
# Attention maths that transformers passes as keywords and flash_attention does not compute.
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks")


def _expect_causal_pattern(mask_function, grid: dict) -> None:
    """Evaluate the model's mask pattern on this call's (query, key) grid: it must be exactly the causal one.

    While torch.compile traces (where transformers always builds a packed-sequence pattern, causal for ordinary
    position ids), the check is an assertion inside the graph rather than a Python branch.
    """
    grid = {**grid, "attention_mask": None, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False}
    pattern = sdpa_mask(mask_function=mask_function, **grid)
    causal = sdpa_mask(mask_function=causal_mask_function, **grid).expand_as(pattern)
    window = grid.get("local_size")
    message = ("the model's attention pattern must be causal or full over padded sequences, got "
               + (f"a sliding window of {window} tokens that cuts into the {grid['kv_length']} keys of this call"
                  if window is not None else "another pattern (packed sequences, token-type or chunked attention)")
               + "; use attn_implementation='sdpa' for it")
    if torch.compiler.is_compiling():
        torch._assert_async((pattern == causal).all(), f"{OP}: {message}")
    else:
        expect(torch.equal(pattern, causal), OP, message)


def attention_mask(mask_function=causal_mask_function, attention_mask=None, **kwargs):
    """The mask that 'neva' attention reads: None, or the 2D key-validity mask [batch, keys] (as for FlashAttention).

    Called by transformers' create_*_mask with the pattern (`mask_function`) and the user's 2D padding mask.
    """
    if mask_function is not causal_mask_function and mask_function is not bidirectional_mask_function:
        _expect_causal_pattern(mask_function, kwargs)
    return flash_attention_mask(mask_function=mask_function, attention_mask=attention_mask, **kwargs)


def _offsets(valid: Tensor) -> tuple[Tensor, int]:
    """cu_seqlens (int32, [batch + 1]) and the longest length of the rows of a [batch, positions] validity mask."""
    lengths = valid.sum(dim=1, dtype=torch.int32)
    return F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)), int(lengths.max()) if lengths.numel() else 0


def _unpadded_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, causal: bool, scale: float) -> Tensor:
    """Attention of q [B, Sq, H, D] over the valid keys of k/v [B, Sk, Hkv, D], as one packed varlen batch.

    The queries are the last Sq of the mask's L positions (keys past L are unwritten static-cache slots). Packing
    keeps the order of the valid positions, so bottom-right causal alignment in the packed sequence lets a query
    see exactly the valid keys at or before its own position. Padding query rows give zeros.
    """
    batch, seqlen_q, heads, head_dim = q.shape
    length = key_valid.shape[1]
    expect(seqlen_q <= length <= k.shape[1], OP,
           f"the padding mask must cover between {seqlen_q} (the queries) and {k.shape[1]} (the keys) positions, "
           f"got {length}")
    query_valid = key_valid[:, length - seqlen_q:]
    q_rows, k_rows = query_valid.flatten().nonzero().squeeze(1), key_valid.flatten().nonzero().squeeze(1)
    (cu_q, max_q), (cu_k, max_k) = _offsets(query_valid), _offsets(key_valid)
    k, v = (t[:, :length].reshape(batch * length, *t.shape[2:])[k_rows] for t in (k, v))
    out = nk.flash_attention(q.reshape(batch * seqlen_q, heads, head_dim)[q_rows], k, v, causal, scale, cu_q, cu_k,
                             max_q, max_k)
    return out.new_zeros(batch * seqlen_q, heads, head_dim).index_copy(0, q_rows, out).view(q.shape)


def attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention signature: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] -> (out [B, Sq, Hq, D], None).

    Causal unless the module (or an `is_causal` keyword) says otherwise, as with SDPA; GQA as flash_attention
    does it. Attention weights are never materialized, so the second result is None (as with SDPA).
    """
    expect(dropout == 0, OP, f"'dropout' must be 0 (flash_attention has no attention dropout), got {dropout}; "
                             "set the config's attention_dropout to 0 to train")
    for name in _UNSUPPORTED_KWARGS:
        expect(kwargs.get(name) is None, OP, f"'{name}' must be None (flash_attention does not compute it), "
                                             f"got {kwargs.get(name)!r}")
    expect(attention_mask is None or getattr(attention_mask, "ndim", None) == 2, OP,
           "'attention_mask' must be None or the 2D [batch, keys] padding mask that transformers builds for 'neva', "
           f"got {type(attention_mask).__name__} of shape {list(getattr(attention_mask, 'shape', []))}")
    causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if causal is None else causal)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if attention_mask is None:
        return nk.flash_attention(q, k, v, causal, scale), None
    return _unpadded_attention(q, k, v, attention_mask.bool(), causal, scale), None
