"""The example pictures shipped with the package, with questions about them and their true answers."""
from __future__ import annotations

import json
import random
from pathlib import Path

from .scenes import questions, random_scene, render

EXAMPLE_SIZE = 160  # pixels; the model resizes to its own input size
SHAPE_COUNTS = (1, 2, 3, 3)


def write_examples(directory: Path, seed: int) -> None:
    """scene-1.png ... and questions.json: {file: [{"question", "answer"}, ...]}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 7)
    catalogue = {}
    for number, count in enumerate(SHAPE_COUNTS, start=1):
        scene = random_scene(rng, count)
        name = f"scene-{number}.png"
        render(scene, EXAMPLE_SIZE).save(directory / name, optimize=True)
        catalogue[name] = [{"question": qa.question, "answer": qa.answer} for qa in questions(scene, rng)]
    (directory / "questions.json").write_text(json.dumps(catalogue, indent=2) + "\n")
