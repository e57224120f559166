"""Scenes with their questions, and their pictures as the model sees them (drawn at assorted sizes, preprocessed)."""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor

from ..image import preprocess_images
from .recipe import RENDER_SIZES, VISION
from .scenes import QA, Scene, questions, random_scene, render


def pictures(scenes: list[Scene], rng: random.Random) -> Tensor:
    """Pixel values [len(scenes), 3, S, S], each scene drawn at a random size of RENDER_SIZES first."""
    return preprocess_images([render(s, rng.choice(RENDER_SIZES)) for s in scenes], VISION.image_size)


@dataclass
class ScenePool:
    scenes: list[Scene]
    qas: list[list[QA]]  # the questions of each scene
    seed: int

    @classmethod
    def generate(cls, count: int, seed: int) -> ScenePool:
        rng = random.Random(seed)
        scenes = [random_scene(rng) for _ in range(count)]
        return cls(scenes, [questions(s, rng) for s in scenes], seed)

    def picture_chunks(self, chunk: int = 500) -> Iterator[Tensor]:
        """The pixel values of all scenes, `chunk` at a time (the same pictures on every call)."""
        rng = random.Random(self.seed + 1)
        for start in range(0, len(self.scenes), chunk):
            yield pictures(self.scenes[start:start + chunk], rng)
