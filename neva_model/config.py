"""Model configurations: presets by name, and the translation of a llava-hf config.json.

Missing keys in a llava-hf config take the defaults transformers gives them (LlavaConfig, CLIPVisionConfig,
LlamaConfig), because the published checkpoints rely on those defaults (llava-1.5-7b-hf's text_config names
little more than its vocabulary size).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from neva_kernels import NevaValueError


class NevaConfigError(NevaValueError):
    """A configuration value is missing, inconsistent or not supported."""


@dataclass(frozen=True)
class VisionConfig:
    """A CLIP ViT: conv patch embedding, class + position embeddings, pre-LN blocks with quick_gelu MLPs."""
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    """A LLaMA-family decoder: RMSNorm, RoPE (optionally linearly scaled), GQA attention, SwiGLU MLP."""
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads (resolved on construction)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0  # "linear" RoPE scaling divides every frequency by it
    max_position_embeddings: int = 2048
    attention_bias: bool = False
    mlp_bias: bool = False
    eos_token_id: int | tuple[int, ...] | None = 2

    def __post_init__(self):
        if self.head_dim is None:  # one spelling per configuration, so that equal configs compare equal
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim


@dataclass(frozen=True)
class NevaConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_index: int = 32000
    vision_feature_layer: int | tuple[int, ...] = -2  # a tuple: those layers' features, concatenated
    vision_feature_select_strategy: str = "default"  # "default" drops the CLS token, "full" keeps it
    projector_bias: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self):
        layers = self.feature_layers
        bad = [i for i in layers if not -(self.vision.num_layers + 1) <= i <= self.vision.num_layers]
        _expect(layers and not bad, f"vision_feature_layer {self.vision_feature_layer!r} must index the "
                                    f"{self.vision.num_layers + 1} hidden states of the vision tower")
        _expect(self.vision_feature_select_strategy in ("default", "full"),
                f"vision_feature_select_strategy must be 'default' or 'full', got "
                f"{self.vision_feature_select_strategy!r}")
        _expect(self.text.num_heads % self.text.num_kv_heads == 0,
                f"num_attention_heads ({self.text.num_heads}) must be a multiple of num_key_value_heads "
                f"({self.text.num_kv_heads})")
        _expect(self.vision.hidden_size % self.vision.num_heads == 0,
                f"vision hidden_size ({self.vision.hidden_size}) must be a multiple of its heads "
                f"({self.vision.num_heads})")

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

    @property
    def image_tokens_per_image(self) -> int:
        return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

    @classmethod
    def from_name(cls, name: str) -> NevaConfig:
        if name not in PRESETS:
            raise NevaConfigError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[name]


def _expect(condition, message: str) -> None:
    if not condition:
        raise NevaConfigError(message)


_LLAVA_VISION = VisionConfig()
PRESETS: dict[str, NevaConfig] = {
    "tiny": NevaConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4, image_size=56),
        text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=1024),
        image_token_index=511),
    "llava-1.5-7b": NevaConfig(vision=_LLAVA_VISION, text=TextConfig(vocab_size=32064, rms_norm_eps=1e-5,
                                                                      max_position_embeddings=4096)),
    "llava-1.5-13b": NevaConfig(vision=_LLAVA_VISION, text=TextConfig(
        vocab_size=32064, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40,
        rms_norm_eps=1e-5, max_position_embeddings=4096)),
}


# ---- llava-hf config.json ------------------------------------------------------------------------------------

def _rope(text: dict) -> tuple[float, float]:
    """(rope_theta, linear scaling factor) from transformers 5's rope_parameters or 4's rope_theta/rope_scaling."""
    params = dict(text.get("rope_parameters") or {})
    scaling = text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = params.get("factor", scaling.get("factor", 1.0))
    if kind not in ("default", "linear"):
        raise NevaConfigError(f"RoPE scaling {kind!r} is not supported (supported: none/'default' and 'linear')")
    return float(theta), float(factor) if kind == "linear" else 1.0


def _vision(vision: dict | None) -> VisionConfig:
    if vision is None:  # LlavaConfig's own default vision tower
        return _LLAVA_VISION
    act = vision.get("hidden_act", "quick_gelu")
    _expect(act == "quick_gelu", f"vision hidden_act {act!r} is not supported (CLIP's 'quick_gelu' is)")
    clip = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224,
                        patch_size=32)  # CLIPVisionConfig's defaults
    return replace(clip, **{ours: vision[theirs] for ours, theirs in (
        ("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"), ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"), ("image_size", "image_size"), ("patch_size", "patch_size"),
        ("num_channels", "num_channels"), ("layer_norm_eps", "layer_norm_eps")) if theirs in vision})


def _text(text: dict) -> TextConfig:
    model_type = text.get("model_type", "llama")
    _expect(model_type == "llama", f"text model_type {model_type!r} is not supported (llama is)")
    act = text.get("hidden_act", "silu")
    _expect(act == "silu", f"text hidden_act {act!r} is not supported (LLaMA's 'silu' is)")
    theta, factor = _rope(text)
    heads = text.get("num_attention_heads", 32)
    eos = text.get("eos_token_id", 2)
    return TextConfig(
        vocab_size=text.get("vocab_size", 32000), hidden_size=text.get("hidden_size", 4096),
        intermediate_size=text.get("intermediate_size", 11008), num_layers=text.get("num_hidden_layers", 32),
        num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim"),
        rms_norm_eps=text.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling_factor=factor,
        max_position_embeddings=text.get("max_position_embeddings", 2048),
        attention_bias=text.get("attention_bias", False), mlp_bias=text.get("mlp_bias", False),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos)


def from_hf_config(path_or_dict: str | Path | dict) -> NevaConfig:
    """A NevaConfig from a llava-hf config.json: its path, the directory holding it, or its parsed dict."""
    if isinstance(path_or_dict, dict):
        hf = path_or_dict
    else:
        path = Path(path_or_dict)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise NevaConfigError(f"no config.json at {path}")
        hf = json.loads(path.read_text())
    _expect(hf.get("model_type", "llava") == "llava", f"model_type {hf.get('model_type')!r} is not 'llava'")
    act = hf.get("projector_hidden_act", "gelu")
    _expect(act == "gelu", f"projector_hidden_act {act!r} is not supported (LLaVA's 'gelu' is)")
    text = hf.get("text_config") or {}
    layer = hf.get("vision_feature_layer", -2)
    return NevaConfig(
        vision=_vision(hf.get("vision_config")), text=_text(text),
        image_token_index=hf.get("image_token_index", hf.get("image_token_id", 32000)),
        vision_feature_layer=tuple(layer) if isinstance(layer, list) else layer,
        vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
        projector_bias=hf.get("multimodal_projector_bias", True),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings") or text.get("tie_word_embeddings")))
