"""The model shape and every training hyperparameter of the shipped model, in one place."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import NevaConfig, TextConfig, VisionConfig
from .vocabulary import EOS, IMAGE


@dataclass(frozen=True)
class Stage:
    steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    train_scenes: int = 10000  # the pool the NeVA stages draw from (their vision features are computed once)
    eval_scenes: int = 500  # fresh scenes, from a seed the training never uses
    clip: Stage = Stage(steps=2500, batch_size=128, lr=1e-3)
    lm: Stage = Stage(steps=150, batch_size=64, lr=2e-3)
    stage1: Stage = Stage(steps=150, batch_size=64, lr=2e-3)  # NeVA pretraining: the projector only
    stage2: Stage = Stage(steps=3000, batch_size=64, lr=1.5e-3)  # NeVA finetuning: projector + language model

    def scaled(self, fraction: float) -> Recipe:
        """The same recipe with every stage's steps (and the scene pools) cut to `fraction`: for quick checks."""
        def cut(stage: Stage) -> Stage:
            return Stage(max(1, round(stage.steps * fraction)), stage.batch_size, stage.lr)
        return Recipe(self.seed, max(8, round(self.train_scenes * fraction)),
                      max(4, round(self.eval_scenes * fraction)), cut(self.clip), cut(self.lm), cut(self.stage1),
                      cut(self.stage2))


# Renders are drawn at one of these sizes; the model's preprocessing resizes them to VISION.image_size.
RENDER_SIZES = (40, 64, 96, 144)

# head_dim 64 in both towers: the size every neva_kernels backend supports.
VISION = VisionConfig(hidden_size=128, intermediate_size=256, num_layers=3, num_heads=2, image_size=40,
                      patch_size=10)


# The context (prompt + answer) of the trained model; the tokenizer's max length too.
MAX_POSITIONS = 512


def model_config(vocab_size: int) -> NevaConfig:
    text = TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_layers=3, num_heads=2,
                      num_kv_heads=1, head_dim=64, max_position_embeddings=MAX_POSITIONS, eos_token_id=EOS)
    return NevaConfig(vision=VISION, text=text, image_token_index=IMAGE)
