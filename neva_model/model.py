"""NeVA: CLIP vision tower -> MLP projector into the image-token rows of the prompt -> LLaMA decoder -> lm head."""
from __future__ import annotations

import torch
from torch import Tensor, nn

import neva_kernels
from neva_kernels import NevaTypeError, NevaValueError

from .config import NevaConfig
from .decoder import AttentionBatch, Decoder
from .vision import VisionTower, check_pixel_values


class Projector(nn.Module):
    """LLaVA's mlp2x_gelu. Holds the weights; neva_kernels.project_image_tokens runs it (see Neva.embed)."""

    def __init__(self, config: NevaConfig):
        super().__init__()
        features = config.vision.hidden_size * len(config.feature_layers)
        self.linear_1 = nn.Linear(features, config.text.hidden_size, bias=config.projector_bias)
        self.linear_2 = nn.Linear(config.text.hidden_size, config.text.hidden_size, bias=config.projector_bias)


def packed_prefill_batch(lengths: list[int], device) -> AttentionBatch:
    """The AttentionBatch of whole sequences of `lengths` packed one after another, positions from 0."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    positions = [p for n in lengths for p in range(n)]  # built on the host: one copy to the device each
    return AttentionBatch(positions=torch.tensor(positions, dtype=torch.int64, device=device),
                          cu_seqlens=torch.tensor(offsets, dtype=torch.int32, device=device),
                          max_seqlen=max(lengths, default=0))


def check_token_ids(ids, where: str, name: str, batch: int | None = None) -> None:
    """ids must be an integer tensor [batch, tokens] (of `batch` rows when given)."""
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise NevaTypeError(f"{where}: '{name}' must be an integer tensor, got "
                            f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() != 2 or (batch is not None and ids.shape[0] != batch):
        rows = "batch" if batch is None else f"{batch} (one row per image)"
        raise NevaValueError(f"{where}: '{name}' must have shape [{rows}, tokens], got {list(ids.shape)}")


class Neva(nn.Module):
    """The NeVA / LLaVA-1.5 model. ``Neva()`` is the small "tiny" preset; a name or a NevaConfig picks another.

    Module names follow llava-hf's checkpoints (vision_tower, multi_modal_projector, language_model, lm_head),
    so that weights load by name (neva_model.weights).
    """
    tensor_parallel = None  # this rank's neva_model.parallel.TensorParallel once shard_neva split the decoder

    def __init__(self, config: NevaConfig | str = "tiny"):
        super().__init__()
        self.config = NevaConfig.from_name(config) if isinstance(config, str) else config
        self.vision_tower = VisionTower(self.config.vision)
        self.multi_modal_projector = Projector(self.config)
        self.language_model = Decoder(self.config.text)
        self.lm_head = nn.Linear(self.config.text.hidden_size, self.config.text.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight

    @property
    def kv_heads_per_process(self) -> int:
        """The K/V heads this process computes and caches: all of them, or its share under tensor parallelism."""
        return self.language_model.layers[0].self_attn.num_kv_heads

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """pixel_values [images, 3, S, S] -> vision features [images, tokens_per_image, hidden * feature layers]."""
        states = self.vision_tower(pixel_values, self.config.feature_layers)
        if self.config.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]  # drop the CLS token
        return torch.cat(states, dim=-1)

    def embed(self, input_ids: Tensor, image_features: Tensor | None = None) -> Tensor:
        """Token embeddings of input_ids; each image token's row gets the next projected image feature, in order.

        Without image features an image token is embedded as any token (as transformers does when a model
        generates it); with them its embedding row is never read, so an index past the vocabulary is fine.
        """
        if image_features is None:
            return self.language_model.embed_tokens(input_ids)
        image_mask = input_ids == self.config.image_token_index
        embeds = self.language_model.embed_tokens(torch.where(image_mask, 0, input_ids))
        proj = self.multi_modal_projector
        return neva_kernels.project_image_tokens(image_features.to(embeds.dtype), proj.linear_1.weight,
                                                 proj.linear_1.bias, proj.linear_2.weight, proj.linear_2.bias,
                                                 embeds, image_mask)

    def forward_expanded(self, input_ids: Tensor, pixel_values: Tensor | None = None) -> Tensor:
        """Logits [B, T, vocab] of input_ids [B, T] that already hold one image token per image feature
        (transformers' convention), e.g. from neva_model.tokenizer's placeholder expansion."""
        check_token_ids(input_ids, "Neva", "input_ids")
        if pixel_values is not None:
            check_pixel_values(self.config.vision, pixel_values, "Neva")
        features = self.image_features(pixel_values) if pixel_values is not None else None
        batch, length = input_ids.shape
        embeds = self.embed(input_ids.reshape(-1), features)
        hidden = self.language_model(embeds, packed_prefill_batch([length] * batch, input_ids.device))
        return self.lm_head(hidden).reshape(batch, length, -1)

    def forward(self, images: Tensor, caption_tokens: Tensor) -> Tensor:
        """images [B, 3, S, S] and caption_tokens [B, T] -> logits [B, T_img + T, vocab], image tokens first."""
        check_pixel_values(self.config.vision, images, "Neva", "images")
        check_token_ids(caption_tokens, "Neva", "caption_tokens", images.shape[0])
        image_tokens = torch.full((caption_tokens.shape[0], self.config.image_tokens_per_image),
                                  self.config.image_token_index, dtype=torch.long, device=caption_tokens.device)
        return self.forward_expanded(torch.cat((image_tokens, caption_tokens.long()), dim=1), images)
