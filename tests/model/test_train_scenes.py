"""The shapes task: scene invariants, pictures, questions and answers, and the trained tokenizer."""
import itertools
import random
from collections import Counter

import pytest

from neva_model.image import preprocess_images
from neva_model.prompts import build_prompt
from neva_model.train.recipe import VISION
from neva_model.train.scenes import (COLORS, MIN_X_GAP, QUESTION_TYPES, SHAPES, Scene, Shape, caption, questions,
                                     random_scene, render)
from neva_model.train.vocabulary import SPECIAL_TOKENS, save_tokenizer, task_corpus, train_tokenizer


@pytest.fixture(scope="module")
def scenes():
    rng = random.Random(random.randrange(2**32))
    return [random_scene(rng) for _ in range(400)], rng


def test_scene_geometry(scenes):
    for scene in scenes[0]:
        assert 1 <= len(scene.shapes) <= 3
        assert [s.x for s in scene.shapes] == sorted(s.x for s in scene.shapes)
        for s in scene.shapes:
            assert s.size >= 0.15 and s.kind in SHAPES and s.color in COLORS
            assert s.size / 2 <= s.x <= 1 - s.size / 2 and s.size / 2 <= s.y <= 1 - s.size / 2
        for a, b in itertools.combinations(scene.shapes, 2):
            reach = (a.size + b.size) / 2
            assert abs(a.x - b.x) >= MIN_X_GAP
            assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach, "shapes overlap"


@pytest.mark.parametrize("size", [40, 97, 160])
def test_render_paints_each_shape_centre_in_its_colour(scenes, size):
    for scene in scenes[0][:50]:
        image = render(scene, size)
        assert image.size == (size, size) and image.mode == "RGB"
        for s in scene.shapes:
            assert image.getpixel((int(s.x * size), int(s.y * size))) == COLORS[s.color]
        assert image.getpixel((0, 0)) == scene.background


def test_the_model_sees_the_whole_scene():
    """Square pictures survive CLIP preprocessing whole: the crop is the full picture, resized."""
    scene = Scene((Shape("square", "red", 0.2, 0.2, 0.3),), (250, 250, 250))
    pixels = preprocess_images(render(scene, 144), VISION.image_size)
    assert pixels.shape == (1, 3, VISION.image_size, VISION.image_size)
    near_corner = round(0.1 * VISION.image_size)  # inside the square, which reaches from 0.05 to 0.35
    red = pixels[0, :, near_corner, near_corner]
    assert red[0] > 1.0 and red[1] < 0 and red[2] < 0  # (215, 38, 38) in CLIP's normalization
    assert (pixels[0, :, -1, -1] > 1.5).all()  # the opposite corner: background, not cropped away


def test_caption_lists_shapes_left_to_right():
    shapes = (Shape("circle", "red", 0.2, 0.5, 0.2), Shape("square", "orange", 0.5, 0.2, 0.2),
              Shape("triangle", "blue", 0.8, 0.8, 0.2))
    assert caption(Scene(shapes, (255, 255, 255))) == "a red circle, an orange square and a blue triangle"
    assert caption(Scene(shapes[:2], (255, 255, 255))) == "a red circle and an orange square"
    assert caption(Scene(shapes[2:], (255, 255, 255))) == "a blue triangle"


def test_answers_follow_from_the_scene(scenes):
    all_scenes, rng = scenes
    for scene in all_scenes:
        kinds, colors = [s.kind for s in scene.shapes], [s.color for s in scene.shapes]
        qas = questions(scene, rng)
        assert len({qa.kind for qa in qas}) == len(qas)
        for qa in qas:
            words = qa.question.rstrip("?.").split()
            if qa.kind == "color_of_shape":
                assert kinds.count(words[-1]) == 1 and qa.answer == colors[kinds.index(words[-1])]
            elif qa.kind == "shape_of_color":
                assert colors.count(words[-2]) == 1 and qa.answer == kinds[colors.index(words[-2])]
            elif qa.kind == "count_all":
                assert qa.answer == str(len(kinds))
            elif qa.kind == "count_color":
                assert qa.answer == str(colors.count(words[2]))
            elif qa.kind == "exists":
                assert qa.answer == ("yes" if (words[-2], words[-1]) in set(zip(colors, kinds)) else "no")
            elif qa.kind == "leftmost":
                assert qa.answer == min(scene.shapes, key=lambda s: s.x).kind
            else:
                assert qa.answer == caption(scene)
            assert qa.answer == qa.answer.lower()


def test_question_mix(scenes):
    all_scenes, rng = scenes
    qas = [qa for scene in all_scenes for qa in questions(scene, rng)]
    kinds = Counter(qa.kind for qa in qas)
    assert set(kinds) == set(QUESTION_TYPES)
    assert min(kinds.values()) > 0.5 * len(all_scenes)  # the conditional types still come often
    yes = sum(qa.answer == "yes" for qa in qas if qa.kind == "exists")
    assert 0.4 < yes / kinds["exists"] < 0.6


def test_tokenizer_covers_the_task_and_the_template(tmp_path):
    tokenizer = train_tokenizer(task_corpus(seed=random.randrange(1000), num_scenes=300))
    vocab = tokenizer.get_vocab()
    assert all(vocab[token] == index for index, token in enumerate(SPECIAL_TOKENS))
    neva = save_tokenizer(tokenizer, tmp_path, 128)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    prompt = build_prompt("Is there an orange triangle?")
    ids = neva.encode(prompt)
    assert ids[0] == neva.bos_token_id and neva.image_token_id in ids and vocab["<unk>"] not in ids
    assert neva.decode(ids) == "user : is there an orange triangle? assistant :"
    text = "a red circle, an orange square and a blue triangle"
    assert neva.decode(neva.encode(text, add_bos=False)) == text
    assert neva.encode("What is a zebra?", add_bos=False).count(vocab["<unk>"]) == 1
