"""The CLIP ViT vision tower of NeVA (pre-LN transformer, quick_gelu MLP; attention and LayerNorms by neva_kernels)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

import neva_kernels
from neva_kernels import NevaTypeError, NevaValueError

from .config import VisionConfig
from .fused_linear import FusedLinear
from .norms import LayerNorm


def check_pixel_values(config: VisionConfig, pixel_values, where: str, name: str = "pixel_values") -> None:
    """pixel_values must be a float tensor [images, channels, image_size, image_size] of the model's sizes: the
    position embeddings are learned for one grid of patches (preprocess_images resizes any image to it)."""
    if not isinstance(pixel_values, Tensor) or not pixel_values.is_floating_point():
        raise NevaTypeError(f"{where}: '{name}' must be a floating-point tensor, got "
                            f"{getattr(pixel_values, 'dtype', type(pixel_values).__name__)}")
    expected = [config.num_channels, config.image_size, config.image_size]
    if pixel_values.dim() != 4 or list(pixel_values.shape[1:]) != expected:
        raise NevaValueError(f"{where}: '{name}' must have shape [images, {', '.join(map(str, expected))}] (the "
                             f"model's image_size is {config.image_size}), got {list(pixel_values.shape)}")


class VisionEmbeddings(nn.Module):
    """Conv patch embedding, a learned class token in front, learned position embeddings added."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size) * config.hidden_size ** -0.5)  # CLIP's
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, config.hidden_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat((cls, patches), dim=1) + self.position_embedding.weight


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        size = config.hidden_size
        self.qkv_proj = FusedLinear(size, {"q_proj": size, "k_proj": size, "v_proj": size}, bias=True)
        self.out_proj = nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        heads = (*x.shape[:2], self.num_heads, self.head_dim)
        q, k, v = (t.reshape(heads) for t in self.qkv_proj.split(self.qkv_proj(x)))
        return self.out_proj(neva_kernels.flash_attention(q, k, v, causal=False).flatten(2))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # CLIP's quick_gelu


class VisionLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layer_norm1 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        normalized, x = self.layer_norm2(self.self_attn(self.layer_norm1(x)), residual=x)  # x += attention, fused
        return x + self.mlp(normalized)


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_layers))


class VisionTower(nn.Module):
    """CLIP's vision model. It returns the hidden states of chosen layers, never the pooled output.

    post_layernorm is kept only so that checkpoints load completely: LLaVA reads hidden states before it.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = LayerNorm(config.hidden_size, config.layer_norm_eps)  # (sic: CLIP's name)
        self.encoder = VisionEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, pixel_values: Tensor, feature_layers: tuple[int, ...]) -> list[Tensor]:
        """Hidden states [images, 1 + patches, hidden] of `feature_layers`, indices into the num_layers + 1 states
        (0: the embeddings after pre_layrnorm; -1: the last layer's output) as HF's hidden_states tuple counts.
        Layers past the deepest one asked for are not run (LLaVA's usual -2 skips the last layer)."""
        check_pixel_values(self.config, pixel_values, "VisionTower")
        num_states = len(self.encoder.layers) + 1
        wanted = [i % num_states for i in feature_layers]
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        kept = {0: h}  # only the states asked for stay alive
        for index, layer in enumerate(self.encoder.layers[:max(wanted)], start=1):
            h = layer(h)
            if index in wanted:
                kept[index] = h
        return [kept[i] for i in wanted]
