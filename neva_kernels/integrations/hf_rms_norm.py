"""transformers' RMSNorm modules -> neva_kernels.rms_norm, and the residual add of LLaMA-style decoder layers fused in.

A module is taken for an RMSNorm by its class name; it is patched only when a probe shows it computes LLaMA's
maths (x / rms(x) * weight, the variance in float32), and refused otherwise (e.g. Gemma's (1 + weight) offset).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import neva_kernels as nk
from neva_kernels import reference


def is_rms_norm(module: nn.Module) -> bool:
    return "rmsnorm" in type(module).__name__.lower()


def epsilon(module: nn.Module) -> float | None:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return float(eps) if isinstance(eps, (int, float)) else None


def why_not_llama_rms_norm(module: nn.Module) -> str | None:
    """None when `module` computes LLaMA's RMSNorm (checked on random inputs and weights), else how it differs."""
    params = dict(module.named_parameters())
    eps = epsilon(module)
    if list(params) != ["weight"] or params["weight"].dim() != 1 or eps is None:
        return "it does not hold exactly one 1-D 'weight' and a numeric epsilon"
    if len(inspect.signature(type(module).forward).parameters) != 2:
        return "its forward takes more than the input (e.g. a gate)"
    generator = torch.Generator().manual_seed(0)
    hidden, device = params["weight"].shape[0], params["weight"].device
    x = (torch.randn(3, hidden, generator=generator) * 3).to(device)
    weight = (torch.rand(hidden, generator=generator) + 0.5).to(device)
    with torch.no_grad():
        got = torch.func.functional_call(module, {"weight": weight}, (x,))
    expected = reference.rms_norm(x, weight, eps)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return "its output differs from x / rms(x) * weight on a probe (an offset weight such as (1 + w)?)"
    return None


def rms_norm_forward(module: nn.Module, eps: float, hidden_states: torch.Tensor, residual: torch.Tensor | None = None):
    """The module's forward on neva_kernels.rms_norm; with `residual`, returns (norm(x + residual), x + residual).

    Inputs whose dtypes differ from the weight's run the module's own forward: the kernel takes one dtype, and the
    stock module's result then depends on type promotion that the kernel does not reproduce.
    """
    if {hidden_states.dtype, module.weight.dtype, (hidden_states if residual is None else residual).dtype} != {
            hidden_states.dtype}:
        summed = hidden_states if residual is None else residual + hidden_states
        out = type(module).forward(module, summed)
        return out if residual is None else (out, summed)
    return nk.rms_norm(hidden_states, module.weight, eps, residual)


def _code(function) -> tuple:
    code = inspect.unwrap(function).__code__
    return code.co_code, code.co_consts, code.co_names, code.co_varnames


def has_llama_layer_forward(layer: nn.Module) -> bool:
    """The layer's forward is LLaMA's decoder-layer code (Mistral's, Qwen2's, ... are generated from it)."""
    return _code(type(layer).forward) == _code(LlamaDecoderLayer.forward)


def fused_layer_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask=None, position_embeddings=None,
                        **kwargs) -> torch.Tensor:
    """LlamaDecoderLayer.forward with `residual + attention` fused into post_attention_layernorm's kernel.

    Exact: the fused kernel rounds x + residual to the input dtype before normalizing, as the separate add does.
    """
    residual = hidden_states
    hidden_states, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states),
                                       attention_mask=attention_mask, position_embeddings=position_embeddings, **kwargs)
    hidden_states, residual = layer.post_attention_layernorm(hidden_states, residual)
    return residual + layer.mlp(hidden_states)
