"""Model configurations: presets by name, and the translation of a llava-hf config.json.

Missing keys in a llava-hf config take the defaults transformers gives them (LlavaConfig, CLIPVisionConfig,
LlamaConfig or NemotronConfig), because the published checkpoints rely on those defaults (llava-1.5-7b-hf's
text_config names little more than its vocabulary size).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from neva_kernels import NevaTypeError, NevaValueError
from neva_kernels.errors import expect_finite, expect_int


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

    def __post_init__(self):
        _check_fields(self, "vision_config", _VISION_KEYS)
        _expect(self.patch_size <= self.image_size,
                f"vision_config: patch_size ({self.patch_size}) must be at most image_size ({self.image_size})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# The decoder families: which norm and MLP their layers use (see neva_model.decoder).
FAMILIES = ("llama", "nemotron")
# MLP activations: LLaMA gates with silu (SwiGLU); Nemotron's MLP is ungated, squared ReLU by default.
GATED_ACTIVATIONS = ("silu",)
UNGATED_ACTIVATIONS = ("relu2", "relu", "silu", "gelu")


@dataclass(frozen=True)
class TextConfig:
    """A decoder of the LLaMA family (RMSNorm, gated SwiGLU MLP) or the Nemotron family (LayerNorm1P with a
    zero-centred weight and a bias, ungated MLP, squared ReLU), with RoPE (optionally linearly scaled, on the first
    partial_rotary_factor of each head) and GQA attention."""
    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads (resolved on construction)
    norm_eps: float = 1e-6  # LLaMA's rms_norm_eps, Nemotron's norm_eps
    hidden_act: str = "silu"
    partial_rotary_factor: float = 1.0  # the fraction of each head's features that RoPE rotates
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0  # "linear" RoPE scaling divides every frequency by it
    max_position_embeddings: int = 2048
    attention_bias: bool = False
    mlp_bias: bool = False
    eos_token_id: int | tuple[int, ...] | None = 2

    def __post_init__(self):
        _check_fields(self, "text_config", _TEXT_KEYS)
        eos = (self.eos_token_id,) if isinstance(self.eos_token_id, int) else self.eos_token_id or ()
        _expect(isinstance(eos, tuple) and all(isinstance(t, int) and not isinstance(t, bool) and
                                               0 <= t < self.vocab_size for t in eos),
                f"text_config: eos_token_id must be token ids in [0, vocab_size={self.vocab_size}), got "
                f"{self.eos_token_id!r}")
        if self.head_dim is None:  # one spelling per configuration, so that equal configs compare equal
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        _expect(self.family in FAMILIES, f"text family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        activations = GATED_ACTIVATIONS if self.family == "llama" else UNGATED_ACTIVATIONS
        _expect(self.hidden_act in activations, f"text hidden_act {self.hidden_act!r} is not supported for "
                                                f"{self.family} (supported: {', '.join(activations)})")
        rotary = self.rotary_dim
        _expect(0 < self.partial_rotary_factor <= 1 and rotary > 0 and rotary % 2 == 0,
                f"partial_rotary_factor {self.partial_rotary_factor} must rotate an even, non-zero number of the "
                f"{self.head_dim} features of a head, got {rotary}")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim

    @property
    def rotary_dim(self) -> int:
        """The leading features of each head that RoPE rotates (transformers: int(head_dim * factor))."""
        return int(self.head_dim * self.partial_rotary_factor)


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
        _check_fields(self, "config", {})
        layers = self.feature_layers
        _expect(all(isinstance(i, int) and not isinstance(i, bool) for i in layers),
                f"vision_feature_layer must be an int or a list of ints, got {self.vision_feature_layer!r}")
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


# Fields that config.json names differently (the others have the same name there).
_VISION_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}
_TEXT_KEYS = {**_VISION_KEYS, "num_kv_heads": "num_key_value_heads"}


def _check_fields(config, section: str, keys: dict[str, str]) -> None:
    """Sizes are ints >= 1 (image_token_index >= 0), eps / theta / scaling factors finite and > 0, flags bools,
    each named as config.json names it: a 0 or "32" that passed here would fail later as a ZeroDivisionError or
    a shape error far from its cause."""
    for f in fields(config):
        value, name = getattr(config, f.name), keys.get(f.name, f.name)
        try:
            if f.type in ("int", "int | None") and not (value is None and f.type == "int | None"):
                expect_int(section, name, value, minimum=0 if f.name == "image_token_index" else 1)
            elif f.type == "float":  # stored as a float: a JSON 10000 and 10000.0 make equal configs
                object.__setattr__(config, f.name, expect_finite(section, name, value, minimum=0.0,
                                                                 above_minimum=True))
            elif f.type == "bool" and not isinstance(value, bool):
                raise NevaTypeError(f"{section}: '{name}' must be true or false, got {value!r}")
        except (NevaTypeError, NevaValueError) as error:
            raise NevaConfigError(str(error)) from None


_LLAVA_VISION = VisionConfig()
PRESETS: dict[str, NevaConfig] = {
    "tiny": NevaConfig(
        # 256 x 256 images (the README's example) in 8 x 8 patches of 32 pixels: 64 image tokens.
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4, image_size=256,
                            patch_size=32),
        text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=1024),
        image_token_index=511),
    "llava-1.5-7b": NevaConfig(vision=_LLAVA_VISION, text=TextConfig(vocab_size=32064, norm_eps=1e-5,
                                                                      max_position_embeddings=4096)),
    "llava-1.5-13b": NevaConfig(vision=_LLAVA_VISION, text=TextConfig(
        vocab_size=32064, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40,
        norm_eps=1e-5, max_position_embeddings=4096)),
}


def _nemotron_text(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> TextConfig:
    """A Nemotron decoder as NVIDIA publishes them: 256k vocabulary, 4k context, LayerNorm1P, squared ReLU, RoPE on
    half of each head (base 10000), 128-wide heads, untied embeddings."""
    return TextConfig(family="nemotron", vocab_size=256000, hidden_size=hidden, intermediate_size=intermediate,
                      num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=128, norm_eps=1e-5,
                      hidden_act="relu2", partial_rotary_factor=0.5, max_position_embeddings=4096, eos_token_id=3)


# NeVA-class models: LLaVA-1.5's CLIP ViT-L/14-336 and projector on a Nemotron decoder (image token: the last id).
# nemotron-3-8b is the shape of NVIDIA's public Nemotron-3-8B config (32 layers, hidden 4096, 32 heads, FFN 16384).
# NVIDIA published no decoder configs for NeVA-22B / -43B: those two are "-class" approximations, Nemotron-4-15B's
# published shape (hidden 6144, 48 heads, 8 KV heads, FFN 24576) deepened to 48 layers, and a hidden-8192,
# 64-head, 8-KV-head, FFN-32768 decoder of 56 layers; their parameter counts land near 22B and 43B.
NEVA_PRESETS: dict[str, NevaConfig] = {
    "neva-8b-nemotron": NevaConfig(vision=_LLAVA_VISION, text=_nemotron_text(4096, 32, 32, 32, 16384),
                                   image_token_index=255999),
    "neva-22b-class-nemotron": NevaConfig(vision=_LLAVA_VISION, text=_nemotron_text(6144, 48, 48, 8, 24576),
                                          image_token_index=255999),
    "neva-43b-class-nemotron": NevaConfig(vision=_LLAVA_VISION, text=_nemotron_text(8192, 56, 64, 8, 32768),
                                          image_token_index=255999),
}
PRESETS.update(NEVA_PRESETS)


# ---- llava-hf config.json ------------------------------------------------------------------------------------

def read_json_object(path: Path, error: type[Exception] = NevaConfigError) -> dict:
    """The JSON object stored in `path`; unreadable, not JSON or not an object is an `error` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as cause:  # ValueError: bad JSON, bad UTF-8, a 5000-digit int
        raise error(f"cannot read {path}: {cause}") from cause
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _object(parent: dict, key: str, where: str = "") -> dict:
    """parent[key] as a dict ({} when absent or null)."""
    value = parent.get(key)
    _expect(value is None or isinstance(value, dict),
            f"{where}{key} must be an object, got {type(value).__name__}")
    return value or {}


def _rope(text: dict, partial_rotary_factor: float = 1.0) -> dict:
    """rope_theta, rope_scaling_factor (linear) and partial_rotary_factor, from transformers 5's rope_parameters or
    4's rope_theta / rope_scaling / partial_rotary_factor keys."""
    params = _object(text, "rope_parameters", "text_config.")
    scaling = _object(text, "rope_scaling", "text_config.")
    theta = params.get("rope_theta", text.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = params.get("factor", scaling.get("factor", 1.0))
    if kind not in ("default", "linear"):
        raise NevaConfigError(f"RoPE scaling {kind!r} is not supported (supported: none/'default' and 'linear')")
    partial = params.get("partial_rotary_factor", text.get("partial_rotary_factor", partial_rotary_factor))
    # TextConfig checks these and makes them floats (float() here would take "1e4" and raise on [1]).
    return dict(rope_theta=theta, rope_scaling_factor=factor if kind == "linear" else 1.0,
                partial_rotary_factor=partial)


def _renamed(fields_of: type, keys: dict[str, str], section: dict) -> dict:
    """Our field -> section's value, for the fields of `fields_of` that the config.json section sets."""
    names = {f.name: keys.get(f.name, f.name) for f in fields(fields_of)}
    return {ours: section[theirs] for ours, theirs in names.items() if theirs in section}


def _vision(hf: dict) -> VisionConfig:
    if hf.get("vision_config") is None:  # LlavaConfig's own default vision tower
        return _LLAVA_VISION
    vision = _object(hf, "vision_config")
    act = vision.get("hidden_act", "quick_gelu")
    _expect(act == "quick_gelu", f"vision hidden_act {act!r} is not supported (CLIP's 'quick_gelu' is)")
    clip = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224,
                        patch_size=32)  # CLIPVisionConfig's defaults
    return replace(clip, **_renamed(VisionConfig, _VISION_KEYS, vision))


# transformers' defaults of the keys a text_config may leave out, per model_type (LlamaConfig, NemotronConfig);
# "norm_eps" is read from the key that family's config names.
_TEXT_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, eos_token_id=2,
                  norm_eps=("rms_norm_eps", 1e-6), partial_rotary_factor=1.0),
    "nemotron": dict(vocab_size=256000, hidden_size=6144, intermediate_size=24576, num_hidden_layers=32,
                     num_attention_heads=48, hidden_act="relu2", max_position_embeddings=4096, eos_token_id=3,
                     norm_eps=("norm_eps", 1e-5), partial_rotary_factor=0.5),
}


def _text(text: dict) -> TextConfig:
    model_type = text.get("model_type", "llama")
    _expect(model_type in _TEXT_DEFAULTS,
            f"text model_type {model_type!r} is not supported (supported: {', '.join(_TEXT_DEFAULTS)})")
    defaults = _TEXT_DEFAULTS[model_type]
    get = (lambda key: text.get(key, defaults[key]))
    heads = get("num_attention_heads")
    eos = get("eos_token_id")
    eps_key, eps_default = defaults["norm_eps"]
    return TextConfig(
        family=model_type, vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
        intermediate_size=get("intermediate_size"), num_layers=get("num_hidden_layers"),
        num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim"), norm_eps=text.get(eps_key, eps_default), hidden_act=get("hidden_act"),
        **_rope(text, defaults["partial_rotary_factor"]),
        max_position_embeddings=get("max_position_embeddings"),
        attention_bias=text.get("attention_bias", False), mlp_bias=text.get("mlp_bias", False),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos)


def from_hf_config(path_or_dict: str | Path | dict) -> NevaConfig:
    """A NevaConfig from a llava-hf config.json: its path, the directory holding it, or its parsed dict.
    Anything missing, malformed or unsupported is a NevaConfigError (naming the file when given one)."""
    if isinstance(path_or_dict, dict):
        return _from_hf_dict(path_or_dict)
    path = Path(path_or_dict)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise NevaConfigError(f"no config.json at {path}")
    try:
        return _from_hf_dict(read_json_object(path))
    except NevaConfigError as error:
        raise NevaConfigError(error.args[0] if str(path) in error.args[0] else f"{path}: {error}") from None


def _from_hf_dict(hf: dict) -> NevaConfig:
    _expect(hf.get("model_type", "llava") == "llava", f"model_type {hf.get('model_type')!r} is not 'llava'")
    act = hf.get("projector_hidden_act", "gelu")
    _expect(act == "gelu", f"projector_hidden_act {act!r} is not supported (LLaVA's 'gelu' is)")
    text = _object(hf, "text_config")
    layer = hf.get("vision_feature_layer", -2)
    return NevaConfig(
        vision=_vision(hf), text=_text(text),
        image_token_index=hf.get("image_token_index", hf.get("image_token_id", 32000)),
        vision_feature_layer=tuple(layer) if isinstance(layer, list) else layer,
        vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
        projector_bias=hf.get("multimodal_projector_bias", True),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings") or text.get("tie_word_embeddings")))
