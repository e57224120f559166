"""Contrastive (CLIP) pretraining of the vision tower on (picture, caption) pairs of fresh scenes.

A small caption encoder, used only here, embeds the captions. Besides the other captions of the batch, every
picture is also contrasted with five near-miss captions of its own scene (three with one shape reshaped, one
with one recoloured, one with two swapped or one added or removed), so that the tower must see shape, colour,
count and left-right order: random captions of a batch mostly differ in colours and counts, which the tower
would otherwise learn alone (shape is by far the slowest to learn).
"""
from __future__ import annotations

import dataclasses
import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokenizer import NevaTokenizer
from ..vision import VisionTower
from .optimize import optimize
from .pool import pictures
from .recipe import Stage
from .scenes import COLORS, SHAPES, Scene, caption, random_scene
from .sequences import answer_ids
from .vocabulary import PAD


class CaptionEncoder(nn.Module):
    """Token + position embeddings, a pre-LN transformer, the EOS token's state projected to `embed_dim`."""

    def __init__(self, vocab_size: int, width: int = 128, layers: int = 2, heads: int = 2, max_length: int = 32,
                 embed_dim: int = 64):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)

    def forward(self, captions: list[list[int]]) -> Tensor:
        """Token id lists (each ending in EOS) -> embeddings [len(captions), embed_dim]."""
        longest = max(map(len, captions))
        ids = torch.tensor([c + [PAD] * (longest - len(c)) for c in captions])
        x = self.encoder(self.tokens(ids) + self.positions[:longest], src_key_padding_mask=ids == PAD)
        last = torch.tensor([len(c) - 1 for c in captions])
        return self.projection(self.norm(x[torch.arange(len(captions)), last]))


class PictureEncoder(nn.Module):
    """The vision tower's CLS state after its last layer and post_layernorm, projected to `embed_dim`."""

    def __init__(self, tower: VisionTower, embed_dim: int = 64):
        super().__init__()
        self.tower = tower
        self.projection = nn.Linear(tower.post_layernorm.normalized_shape[0], embed_dim, bias=False)

    def forward(self, pixels: Tensor) -> Tensor:
        last = self.tower(pixels, (-1,))[0]
        return self.projection(self.tower.post_layernorm(last[:, 0]))


NEAR_MISSES = ("kind", "kind", "kind", "color", "layout")


def near_miss(scene: Scene, rng: random.Random, change: str) -> Scene:
    """The scene with one small change of the given kind that alters its caption: one shape reshaped, one
    recoloured, or ("layout") two shapes swapped or one added or removed."""
    shapes = list(scene.shapes)
    while True:
        index = rng.randrange(len(shapes))
        edited = list(shapes)
        if change == "color":
            edited[index] = dataclasses.replace(shapes[index], color=rng.choice(list(COLORS)))
        elif change == "kind":
            edited[index] = dataclasses.replace(shapes[index], kind=rng.choice(SHAPES))
        elif len(shapes) > 1 and rng.random() < 0.5:
            other = rng.choice([i for i in range(len(shapes)) if i != index])
            edited[index] = dataclasses.replace(shapes[index], color=shapes[other].color, kind=shapes[other].kind)
            edited[other] = dataclasses.replace(shapes[other], color=shapes[index].color, kind=shapes[index].kind)
        elif len(shapes) > 1:
            del edited[index]
        else:  # add one: only the caption is used, so it goes to the right
            edited.append(dataclasses.replace(shapes[0], x=1.0, color=rng.choice(list(COLORS))))
        candidate = Scene(tuple(edited), scene.background)
        if caption(candidate) != caption(scene):
            return candidate


def clip_loss(picture_embeds: Tensor, caption_embeds: Tensor, log_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE; caption_embeds holds the B true captions, then extra negatives for the pictures."""
    batch = picture_embeds.shape[0]
    logits = log_scale.exp() * F.normalize(picture_embeds, dim=-1) @ F.normalize(caption_embeds, dim=-1).T
    labels = torch.arange(batch)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :batch].T, labels)) / 2


def pretrain_vision_tower(tower: VisionTower, tokenizer: NevaTokenizer, stage: Stage, seed: int) -> list[float]:
    """Train `tower` in place; the caption encoder and both projections are thrown away afterwards."""
    rng = random.Random(seed)
    pictures_net = PictureEncoder(tower)
    captions_net = CaptionEncoder(tokenizer.vocab_size)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    parameters = [*pictures_net.parameters(), *captions_net.parameters(), log_scale]

    def loss_of_step(_: int) -> Tensor:
        scenes = [random_scene(rng) for _ in range(stage.batch_size)]
        texts = [caption(s) for s in scenes]
        texts += [caption(near_miss(s, rng, change)) for change in NEAR_MISSES for s in scenes]
        return clip_loss(pictures_net(pictures(scenes, rng)),
                         captions_net([answer_ids(tokenizer, t) for t in texts]), log_scale)

    tower.train()
    losses = optimize("clip pretraining", parameters, stage, loss_of_step)
    tower.eval().requires_grad_(False)
    return losses
