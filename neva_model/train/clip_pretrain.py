"""Contrastive (CLIP) pretraining of the vision tower on (picture, caption) pairs of fresh scenes.

Three choices make the tower learn shapes, by far the slowest attribute to learn contrastively:
- every picture is contrasted with every one-word edit of its own caption (each shape reshaped into either other
  kind, recoloured into each other colour) and one layout edit (two shapes swapped, or one added or removed),
  besides the other captions of the batch: random captions mostly differ in colours and counts;
- half the scenes hold a single shape, whose caption names its kind with no other shape to credit it to;
- pictures whose captions are equal (frequent among single shapes) count as matches, not as negatives.
The caption encoder, used only here, is a bag of (token, position) embeddings and an MLP: captions are short
lists of the same few words, and it is cheap enough to embed the ~15 edits of every picture on every step.
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

SINGLE_SHAPE_SHARE = 0.5


class CaptionEncoder(nn.Module):
    """Sum of one embedding per (token, position) pair, then LayerNorm and an MLP to `embed_dim`."""

    def __init__(self, vocab_size: int, width: int = 128, max_length: int = 32, embed_dim: int = 64):
        super().__init__()
        self.max_length = max_length
        self.pairs = nn.EmbeddingBag(vocab_size * max_length, width, mode="sum")
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, embed_dim))

    def forward(self, captions: list[list[int]]) -> Tensor:
        """Token id lists -> embeddings [len(captions), embed_dim]."""
        longest = max(map(len, captions))
        if longest > self.max_length:
            raise ValueError(f"captions: the longest has {longest} tokens, the encoder takes {self.max_length}")
        pairs = torch.tensor([token * self.max_length + position for c in captions for position, token in enumerate(c)])
        offsets = torch.tensor([0] + [len(c) for c in captions[:-1]]).cumsum(0)
        return self.mlp(self.pairs(pairs, offsets))


class PictureEncoder(nn.Module):
    """The vision tower's CLS state after its last layer and post_layernorm, projected to `embed_dim`."""

    def __init__(self, tower: VisionTower, embed_dim: int = 64):
        super().__init__()
        self.tower = tower
        self.projection = nn.Linear(tower.config.hidden_size, embed_dim, bias=False)

    def forward(self, pixels: Tensor) -> Tensor:
        last = self.tower(pixels, (-1,))[0]
        return self.projection(self.tower.post_layernorm(last[:, 0]))


def one_word_edits(scene: Scene) -> list[Scene]:
    """The scene with one shape reshaped into each other kind, or recoloured into each other colour."""
    edits = []
    for index, shape in enumerate(scene.shapes):
        changes = [{"kind": k} for k in SHAPES if k != shape.kind] + [{"color": c} for c in COLORS if c != shape.color]
        for change in changes:
            shapes = list(scene.shapes)
            shapes[index] = dataclasses.replace(shape, **change)
            edits.append(Scene(tuple(shapes), scene.background))
    return edits


def layout_edit(scene: Scene, rng: random.Random) -> Scene:
    """The scene with two shapes swapped, or one removed, or (alone) one more to its right; its caption differs."""
    shapes = list(scene.shapes)
    while True:
        index = rng.randrange(len(shapes))
        edited = list(shapes)
        if len(shapes) > 1 and rng.random() < 0.5:
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


def clip_loss(picture_embeds: Tensor, caption_embeds: Tensor, log_scale: Tensor, captions: list[str]) -> Tensor:
    """Symmetric InfoNCE where every caption equal to a picture's own is a match. captions[:B] are the B pictures'
    own; the rest are extra negatives for the pictures."""
    batch = picture_embeds.shape[0]
    logits = log_scale.exp() * F.normalize(picture_embeds, dim=-1) @ F.normalize(caption_embeds, dim=-1).T
    ids = {text: i for i, text in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[text] for text in captions])
    matches = caption_ids[:batch, None] == caption_ids[None, :]

    def matched_log_probability(scores: Tensor, mask: Tensor) -> Tensor:
        return torch.logsumexp(scores.masked_fill(~mask, -math.inf), 1) - torch.logsumexp(scores, 1)

    pictures_to_captions = matched_log_probability(logits, matches)
    captions_to_pictures = matched_log_probability(logits[:, :batch].T, matches[:, :batch])
    return -(pictures_to_captions.mean() + captions_to_pictures.mean()) / 2


def pretrain_vision_tower(tower: VisionTower, tokenizer: NevaTokenizer, stage: Stage, seed: int) -> list[float]:
    """Train `tower` in place; the caption encoder and both projections are thrown away afterwards."""
    rng = random.Random(seed)
    pictures_net = PictureEncoder(tower)
    captions_net = CaptionEncoder(tokenizer.vocab_size)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    parameters = [*pictures_net.parameters(), *captions_net.parameters(), log_scale]

    def loss_of_step(_: int) -> Tensor:
        scenes = [random_scene(rng, 1 if rng.random() < SINGLE_SHAPE_SHARE else None)
                  for _ in range(stage.batch_size)]
        texts = [caption(s) for s in scenes]
        texts += [caption(edit) for s in scenes for edit in one_word_edits(s)]
        texts += [caption(layout_edit(s, rng)) for s in scenes]
        return clip_loss(pictures_net(pictures(scenes, rng)),
                         captions_net([answer_ids(tokenizer, t) for t in texts]), log_scale, texts)

    tower.train()
    losses = optimize("clip pretraining", parameters, stage, loss_of_step)
    tower.eval().requires_grad_(False)
    return losses
