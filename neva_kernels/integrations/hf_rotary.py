"""Rotary embeddings of transformers' LLaMA-family attention -> neva_kernels.rotary_embedding.

These attention modules call their modeling file's global `apply_rotary_pos_emb(q, k, cos, sin)`. A patched module
runs a copy of its own forward whose globals bind that name to `apply_rotary_pos_emb` here, so only the patched
model changes; the stock function and every other model stay as they were.
"""
from __future__ import annotations

import functools
import inspect
import types

import torch
from torch import nn

import neva_kernels as nk

NAME = "apply_rotary_pos_emb"


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1):
    """transformers' NeoX-style rotation of q/k (heads at dim `unsqueeze_dim`) by per-token cos/sin [..., rot_dim].

    cos/sin hold cat(freqs, freqs) (both halves equal, as every LLaMA-family rotary module builds them), so their
    first halves, one row per token, are the cos | sin cache that rotary_embedding reads at positions 0, 1, ...
    """
    half = cos.shape[-1] // 2
    cache = torch.cat((cos[..., :half], sin[..., :half]), dim=-1).reshape(-1, 2 * half)
    q_tokens, k_tokens = q.movedim(unsqueeze_dim, -2), k.movedim(unsqueeze_dim, -2)  # [..., tokens, heads, D]
    positions = torch.arange(cache.shape[0], device=cos.device).view(cos.shape[:-1]).expand(q_tokens.shape[:-2])
    q_out, k_out = nk.rotary_embedding(q_tokens, k_tokens, positions, cache)
    return q_out.movedim(-2, unsqueeze_dim), k_out.movedim(-2, unsqueeze_dim)


def _calling_function(cls: type):
    """The function (under transformers' kwarg-renaming decorators) whose code calls apply_rotary_pos_emb, or None."""
    function = inspect.unwrap(cls.forward)
    return function if NAME in function.__code__.co_names else None


def why_not_llama_rotary(module: nn.Module) -> str | None:
    """None when `module`'s forward applies LLaMA's rotation (checked against ours on random q, k and angles)."""
    function = _calling_function(type(module))
    stock = function.__globals__.get(NAME)
    head_dim = getattr(module, "head_dim", 64)
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5, head_dim, generator=generator), torch.randn(2, 1, 5, head_dim, generator=generator)
    angles = torch.rand(2, 5, head_dim // 2, generator=generator) * 6
    cos, sin = (torch.cat((f, f), dim=-1) for f in (angles.cos(), angles.sin()))
    try:
        expected = stock(q, k, cos, sin)
    except Exception as error:  # a signature or layout of another family
        return f"its {NAME} does not take LLaMA's (q, k, cos, sin): {type(error).__name__}: {error}"
    got = apply_rotary_pos_emb(q, k, cos, sin)
    if not all(torch.allclose(g, e, rtol=1e-4, atol=1e-5) for g, e in zip(got, expected)):
        return f"its {NAME} rotates differently from LLaMA's (NeoX) pairing"
    return None


def uses_rotary(module: nn.Module) -> bool:
    return _calling_function(type(module)) is not None


def why_not_llama_cos_sin(rotary: nn.Module) -> str | None:
    """None when a rotary-embedding module returns LLaMA's (cos, sin) = cat(freqs, freqs) layout for positions."""
    buffer = next(rotary.buffers(), None)
    device = buffer.device if buffer is not None else "cpu"
    try:
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32, device=device),
                          torch.arange(16, device=device)[None])
    except Exception as error:
        return f"it does not map (x, position_ids) to (cos, sin): {type(error).__name__}: {error}"
    half = cos.shape[-1] // 2
    if not all(torch.equal(t[..., :half], t[..., half:]) for t in (cos, sin)):
        return "its cos/sin halves differ (not cat(freqs, freqs)), which rotary_embedding cannot express"
    return None


@functools.cache
def _forward_with_neva_rotary(cls: type):
    """A copy of cls.forward's rotary-calling function, reading `apply_rotary_pos_emb` from globals of its own."""
    function = _calling_function(cls)
    copy = types.FunctionType(function.__code__, {**function.__globals__, NAME: apply_rotary_pos_emb},
                              function.__name__, function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


def rotary_forward(module: nn.Module):
    """The bound forward that `module` runs once patched."""
    return types.MethodType(_forward_with_neva_rotary(type(module)), module)
