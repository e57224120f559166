"""Tiny random llava-hf checkpoints written by transformers, the ground truth of the model tests."""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, NemotronConfig

IMAGE_SIZE, PATCH = 28, 14  # 4 patches per image


@dataclass(frozen=True)
class TinyLlava:
    """One tiny configuration: what differs between the parity cases."""
    name: str
    family: str = "llama"  # or "nemotron": LayerNorm1P, squared-ReLU MLP, partial rotary
    partial_rotary_factor: float = 1.0
    biases: bool = False  # attention and MLP biases (Nemotron)
    heads: int = 4
    kv_heads: int = 2
    hidden: int = 32
    head_dim: int | None = None  # None: hidden // heads
    feature_layer: int | tuple[int, ...] = -2
    strategy: str = "default"
    projector_bias: bool = True
    rope_theta: float = 10000.0
    rope_linear_factor: float | None = None
    tie_embeddings: bool = False
    vocab: int = 96
    image_token_index: int = 95

    @property
    def image_tokens(self) -> int:
        return (IMAGE_SIZE // PATCH) ** 2 + (self.strategy == "full")

    def hf_config(self) -> LlavaConfig:
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_linear_factor is not None:
            rope = {"rope_type": "linear", "rope_theta": self.rope_theta, "factor": self.rope_linear_factor}
        if self.family == "nemotron":
            rope["partial_rotary_factor"] = self.partial_rotary_factor
        vision = CLIPVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=PATCH)
        # initializer_range 0.2: random logits far enough apart that greedy choices are not near-ties.
        text_class = {"llama": LlamaConfig, "nemotron": NemotronConfig}[self.family]
        biases = dict(attention_bias=True, mlp_bias=True) if self.biases else {}
        text = text_class(hidden_size=self.hidden, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, vocab_size=self.vocab,
                          head_dim=self.head_dim or self.hidden // self.heads,
                          rope_parameters=rope, initializer_range=0.2, eos_token_id=None, bos_token_id=1,
                          tie_word_embeddings=self.tie_embeddings, max_position_embeddings=256, **biases)
        layer = list(self.feature_layer) if isinstance(self.feature_layer, tuple) else self.feature_layer
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=self.image_token_index,
                           vision_feature_layer=layer, vision_feature_select_strategy=self.strategy,
                           multimodal_projector_bias=self.projector_bias, tie_word_embeddings=self.tie_embeddings)


PARITY_CASES = [
    TinyLlava("gqa2-layer-2-default"),
    TinyLlava("mqa-layer-1-full-nobias", kv_heads=1, feature_layer=-1, strategy="full", projector_bias=False,
              rope_theta=500000.0),
    TinyLlava("mha-layers-list-linear-rope", kv_heads=4, feature_layer=(-2, 0), rope_theta=1e6, rope_linear_factor=2.0),
    TinyLlava("gqa4-layers-list-full-tied", heads=8, kv_heads=2, hidden=64, feature_layer=(1, -1), strategy="full",
              projector_bias=False, tie_embeddings=True),
    TinyLlava("gqa3-headdim24-layer1", heads=6, kv_heads=2, hidden=96, head_dim=24, feature_layer=1, rope_theta=100.0),
    TinyLlava("nemotron-gqa2-half-rotary", family="nemotron", partial_rotary_factor=0.5),
    TinyLlava("nemotron-mqa-full-rotary-headdim12-full-biases", family="nemotron", partial_rotary_factor=1.0,
              kv_heads=1, head_dim=12, feature_layer=-1, strategy="full", biases=True, rope_linear_factor=2.0),
    TinyLlava("nemotron-gqa3-headdim24-quarter-rotary-layers-list", family="nemotron", partial_rotary_factor=0.25,
              heads=6, kv_heads=2, hidden=48, head_dim=24, feature_layer=(-2, 0), projector_bias=False,
              rope_theta=500.0),
]


def build_hf_model(case: TinyLlava, dtype: torch.dtype = torch.float32) -> LlavaForConditionalGeneration:
    torch.manual_seed(zlib.crc32(case.name.encode()))
    model = LlavaForConditionalGeneration(case.hf_config())
    if case.family == "nemotron":
        # transformers initializes LayerNorm1P to weight 1 and bias 0: random ones make the weight and bias matter.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layernorm" in name or name.endswith(("norm.weight", "norm.bias")):
                    param.copy_(torch.randn_like(param) * 0.3)
    return model.to(dtype).eval()


def write_checkpoint(case: TinyLlava, directory, dtype: torch.dtype = torch.float32, **save_kwargs):
    """Save a random transformers LLaVA of `case` to directory; returns the transformers model."""
    model = build_hf_model(case, dtype)
    model.save_pretrained(directory, **save_kwargs)
    return model


def random_prompt(case: TinyLlava, length: int, image_at: int, generator: torch.Generator) -> list[int]:
    """`length` text tokens (never the image token) with one image's tokens inserted at position image_at."""
    text = torch.randint(3, case.image_token_index, (length,), generator=generator).tolist()
    return text[:image_at] + [case.image_token_index] * case.image_tokens + text[image_at:]
