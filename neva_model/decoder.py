"""The decoder of NeVA on neva_kernels, for both families: LLaMA (RMSNorm, SwiGLU) and NVIDIA's GPT / Nemotron
(LayerNorm1P, ungated squared-ReLU MLP). Both share the layer: norm (residual fused) -> RoPE GQA attention -> norm
-> MLP; a family only picks the norm and the MLP (FAMILY_PARTS).

Every forward pass works on a flat list of N tokens [N, hidden], described by an AttentionBatch: a prefill
is a packed batch of whole sequences (cu_seqlens, flash_attention), a decode step is one token per sequence
attending over its pages of the KV cache (paged_decode_attention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import neva_kernels
from neva_kernels import PagedKVCache

from .config import TextConfig
from .fused_linear import FusedLinear
from .norms import LayerNorm, RMSNorm


@dataclass
class AttentionBatch:
    """How the N tokens of one forward pass relate to sequences and to the KV cache."""
    positions: Tensor  # [N] position of each token in its sequence
    cu_seqlens: Tensor | None = None  # prefill: int32 [B + 1] offsets of the packed sequences
    max_seqlen: int = 0
    slot_mapping: Tensor | None = None  # [N] cache slot each token's K/V is written to (-1: none)
    block_tables: Tensor | None = None  # decode: int32 [N, width] pages of each token's sequence
    seq_lens: Tensor | None = None  # decode: int32 [N] tokens in the cache after this step (0: idle slot)

    @property
    def is_decode(self) -> bool:
        return self.block_tables is not None


def rope_cos_sin_cache(config: TextConfig, device=None) -> Tensor:
    """[max_position, rotary_dim] float32 cos | sin of the RoPE frequencies over the rotated features of a head,
    divided by the linear scaling factor."""
    return neva_kernels.reference.rotary_cos_sin_cache(config.rotary_dim, config.max_position_embeddings,
                                                       config.rope_theta, device=device,
                                                       scaling_factor=config.rope_scaling_factor)


class DecoderAttention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_heads, config.num_kv_heads,
                                                            config.attention_head_dim)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = FusedLinear(config.hidden_size, {"q_proj": q_size, "k_proj": kv_size, "v_proj": kv_size},
                                    bias=config.attention_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.attention_bias)

    def forward(self, x: Tensor, batch: AttentionBatch, rope_cache: Tensor,
                kv_cache: tuple[Tensor, Tensor] | None) -> Tensor:
        q, k, v = self.qkv_proj.split(self.qkv_proj(x))
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        q, k = neva_kernels.rotary_embedding(q, k, batch.positions, rope_cache)
        if kv_cache is not None and batch.slot_mapping is not None:
            neva_kernels.append_kv_cache(k, v, *kv_cache, batch.slot_mapping)
        if batch.is_decode:
            out = neva_kernels.paged_decode_attention(q, *kv_cache, batch.block_tables, batch.seq_lens)
        else:
            out = neva_kernels.flash_attention(q, k, v, causal=True, cu_seqlens_q=batch.cu_seqlens,
                                               cu_seqlens_k=batch.cu_seqlens, max_seqlen_q=batch.max_seqlen,
                                               max_seqlen_k=batch.max_seqlen)
        return self.o_proj(out.flatten(1))


class SwiGLU(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = FusedLinear(config.hidden_size, {"gate_proj": size, "up_proj": size},
                                        bias=config.mlp_bias)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj.split(self.gate_up_proj(x))
        return self.down_proj(F.silu(gate) * up)


_ACTIVATIONS = {
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
}


class UngatedMLP(nn.Module):
    """down(act(up(x))): Nemotron's MLP (transformers' NemotronMLP), squared ReLU by default."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


# family -> (norm of the layers and of the output, MLP)
FAMILY_PARTS = {
    "llama": (lambda config: RMSNorm(config.hidden_size, config.norm_eps), SwiGLU),
    "nemotron": (lambda config: LayerNorm(config.hidden_size, config.norm_eps, zero_centered_weight=True),
                 UngatedMLP),
}


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        make_norm, make_mlp = FAMILY_PARTS[config.family]
        self.input_layernorm = make_norm(config)
        self.self_attn = DecoderAttention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(self, x: Tensor, residual: Tensor | None, batch: AttentionBatch, rope_cache: Tensor,
                kv_cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """x is the previous layer's output not yet added to the residual stream (None before the first)."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, batch, rope_cache, kv_cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class Decoder(nn.Module):
    """Token embeddings -> layers -> final norm. The lm head lives with the model (it may be tied)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = FAMILY_PARTS[config.family][0](config)
        # Not a buffer: module.to(bfloat16) would round the angles (positions past 256 would drift).
        self._rope_cache: Tensor | None = None

    def rope_cache(self, device: torch.device) -> Tensor:
        """The float32 cos/sin cache on `device`, built on first use there."""
        if self._rope_cache is None or self._rope_cache.device != device:
            self._rope_cache = rope_cos_sin_cache(self.config, device)
        return self._rope_cache

    def forward(self, embeds: Tensor, batch: AttentionBatch, kv_cache: PagedKVCache | None = None) -> Tensor:
        """embeds [N, hidden] -> normalized hidden states [N, hidden]; K/V go to kv_cache where batch says."""
        x, residual, rope_cache = embeds, None, self.rope_cache(embeds.device)
        for index, layer in enumerate(self.layers):
            x, residual = layer(x, residual, batch, rope_cache,
                                kv_cache.layer(index) if kv_cache is not None else None)
        return self.norm(x) if residual is None else self.norm(x, residual)[0]
