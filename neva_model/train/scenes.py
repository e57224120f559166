"""The shapes VQA task: random scenes of 1-3 coloured shapes, their pictures, captions, questions and answers.

Geometry is in units of the image side (0..1), so a scene renders at any resolution. Every shape is at least
`MIN_SIZE` of the side, shapes never overlap, and their centres are at least `MIN_X_GAP` apart horizontally, so
that "furthest to the left" and the caption's left-to-right order are never ambiguous. Scenes are square: the
CLIP preprocessing (shortest side resized, centre crop) keeps all of it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (215, 38, 38), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (240, 205, 30),
          "purple": (135, 55, 175), "orange": (245, 135, 25)}
MIN_SIZE, MAX_SIZE = 0.28, 0.38  # shape side (or diameter) as a fraction of the image side; the task's floor is 0.15
MIN_X_GAP = 0.12
COUNT_WORDS = ("0", "1", "2", "3")
QUESTION_TYPES = ("color_of_shape", "shape_of_color", "count_all", "count_color", "exists", "leftmost",
                  "describe")


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    x: float  # centre, fraction of the image side
    y: float
    size: float  # side of the bounding square, fraction of the image side


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]  # left to right
    background: tuple[int, int, int]


@dataclass(frozen=True)
class QA:
    kind: str  # one of QUESTION_TYPES
    question: str
    answer: str


def _separated(a: Shape, b: Shape) -> bool:
    """Bounding squares apart (with a small gap) and centres apart horizontally."""
    gap = 0.02 + (a.size + b.size) / 2
    return abs(a.x - b.x) >= MIN_X_GAP and (abs(a.x - b.x) >= gap or abs(a.y - b.y) >= gap)


def random_scene(rng: random.Random, num_shapes: int | None = None) -> Scene:
    """A scene of `num_shapes` (default: 1 to 3 at random) shapes placed by rejection sampling."""
    count = num_shapes or rng.randint(1, 3)
    while True:
        shapes: list[Shape] = []
        for _ in range(100 * count):
            size = rng.uniform(MIN_SIZE, MAX_SIZE)
            margin = size / 2 + 0.03
            shape = Shape(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.uniform(margin, 1 - margin),
                          rng.uniform(margin, 1 - margin), size)
            if all(_separated(shape, other) for other in shapes):
                shapes.append(shape)
                if len(shapes) == count:
                    background = tuple(rng.randint(228, 255) for _ in range(3))
                    return Scene(tuple(sorted(shapes, key=lambda s: s.x)), background)


def render(scene: Scene, size: int = 96) -> Image.Image:
    """The scene as an RGB image `size` x `size`."""
    image = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        half = shape.size * size / 2
        cx, cy = shape.x * size, shape.y * size
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:  # an upward triangle filling its bounding square's width and height
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image


def article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def caption(scene: Scene) -> str:
    """E.g. "a red circle, an orange square and a green triangle" (shapes left to right)."""
    names = [f"{article(s.color)} {s.color} {s.kind}" for s in scene.shapes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _unique(values: list[str]) -> list[str]:
    return [v for v in dict.fromkeys(values) if values.count(v) == 1]


def questions(scene: Scene, rng: random.Random) -> list[QA]:
    """One question of every type that applies to the scene (answers are short and lowercase)."""
    kinds = [s.kind for s in scene.shapes]
    colors = [s.color for s in scene.shapes]
    qas = []
    if unique_kinds := _unique(kinds):
        kind = rng.choice(unique_kinds)
        qas.append(QA("color_of_shape", f"What color is the {kind}?", colors[kinds.index(kind)]))
    if unique_colors := _unique(colors):
        color = rng.choice(unique_colors)
        qas.append(QA("shape_of_color", f"What shape is the {color} one?", kinds[colors.index(color)]))
    qas.append(QA("count_all", "How many shapes are there?", COUNT_WORDS[len(kinds)]))
    color = rng.choice(colors) if rng.random() < 0.6 else rng.choice(list(COLORS))
    qas.append(QA("count_color", f"How many {color} shapes are there?", COUNT_WORDS[colors.count(color)]))
    qas.append(_exists_question(scene, rng))
    qas.append(QA("leftmost", "Which shape is furthest to the left?", kinds[0]))
    qas.append(QA("describe", "Describe the image.", caption(scene)))
    return qas


def _exists_question(scene: Scene, rng: random.Random) -> QA:
    """Yes half the time; a no asks for a near miss (a colour or a shape that is in the scene) when possible."""
    present = {(s.color, s.kind) for s in scene.shapes}
    if rng.random() < 0.5:
        color, kind = rng.choice(sorted(present))
        answer = "yes"
    else:
        absent = [(c, k) for c in COLORS for k in SHAPES if (c, k) not in present]
        near = [(c, k) for c, k in absent if any(c == pc or k == pk for pc, pk in present)]
        color, kind = rng.choice(near if near and rng.random() < 0.8 else absent)
        answer = "no"
    return QA("exists", f"Is there {article(color)} {color} {kind}?", answer)
