"""Language-model pretraining on the task's text, then NeVA's two stages on the frozen vision tower's features.

- LM pretraining: the decoder and lm head learn the conversations' text (no images).
- Stage 1 (NeVA pretraining): only the projector trains, to caption pictures ("plain" template).
- Stage 2 (NeVA finetuning): projector and language model train on questions in the llava-1.5 template,
  single and in multi-turn conversations, loss on the answer tokens only.
The vision tower is frozen in all three, so its features of the scene pool are computed once.
"""
from __future__ import annotations

import random

import torch
from torch import Tensor

from ..model import Neva
from ..tokenizer import NevaTokenizer
from .optimize import optimize
from .pool import ScenePool
from .recipe import Stage
from .scenes import caption
from .sequences import Example, caption_example, conversation_example, packed_loss, text_example


@torch.no_grad()
def pool_features(model: Neva, pool: ScenePool) -> Tensor:
    """Vision features [scenes, tokens, dim] of every scene of the pool (the tower is frozen)."""
    return torch.cat([model.image_features(pixels) for pixels in pool.picture_chunks()])


def _train(model: Neva, name: str, trainable: list[torch.nn.Parameter], stage: Stage, seed: int,
           example_sets: list[list[tuple[int, Example]]], features: Tensor | None) -> list[float]:
    """Optimize `trainable` on batches of (scene index, example) drawn evenly from each set of examples; the rest
    of the model stays frozen."""
    rng = random.Random(seed)
    model.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    share = stage.batch_size // len(example_sets)

    def loss_of_step(_: int) -> Tensor:
        batch = [drawn for examples in example_sets for drawn in rng.choices(examples, k=share)]
        images = features[[index for index, _ in batch]] if features is not None else None
        return packed_loss(model, [example for _, example in batch], images)

    model.train()
    losses = optimize(name, trainable, stage, loss_of_step)
    model.eval().requires_grad_(False)
    return losses


def language_parameters(model: Neva) -> list[torch.nn.Parameter]:
    return [*model.language_model.parameters(), *model.lm_head.parameters()]


def pretrain_language_model(model: Neva, tokenizer: NevaTokenizer, pool: ScenePool, stage: Stage,
                            seed: int) -> list[float]:
    examples = [(i, text_example(tokenizer, qa.question, qa.answer)) for i, qas in enumerate(pool.qas) for qa in qas]
    return _train(model, "lm pretraining", language_parameters(model), stage, seed, [examples], None)


def neva_pretrain(model: Neva, tokenizer: NevaTokenizer, pool: ScenePool, features: Tensor, stage: Stage,
                  seed: int) -> list[float]:
    tokens = model.config.image_tokens_per_image
    examples = [(i, caption_example(tokenizer, caption(scene), tokens)) for i, scene in enumerate(pool.scenes)]
    return _train(model, "neva stage 1 (projector)", list(model.multi_modal_projector.parameters()), stage, seed,
                  [examples], features)


def neva_finetune(model: Neva, tokenizer: NevaTokenizer, pool: ScenePool, features: Tensor, stage: Stage,
                  seed: int) -> list[float]:
    """Half of every batch are single questions (the prompt `neva ask` builds), half whole conversations about
    one picture: every question of its scene in random order, the caption last (so that no answer can be read
    from the caption instead of the picture)."""
    rng = random.Random(seed + 1)
    tokens = model.config.image_tokens_per_image
    single = [(i, conversation_example(tokenizer, [(qa.question, qa.answer)], tokens))
              for i, qas in enumerate(pool.qas) for qa in qas]
    conversations = []
    for i, qas in enumerate(pool.qas):
        turns = [(qa.question, qa.answer) for qa in qas if qa.kind != "describe"]
        rng.shuffle(turns)
        turns += [(qa.question, qa.answer) for qa in qas if qa.kind == "describe"]
        conversations.append((i, conversation_example(tokenizer, turns, tokens)))
    trainable = [*model.multi_modal_projector.parameters(), *language_parameters(model)]
    return _train(model, "neva stage 2 (projector + lm)", trainable, stage, seed, [single, conversations], features)
