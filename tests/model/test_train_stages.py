"""A few steps of every training stage: each loss falls, and each stage trains only what the recipe says."""
import math
import random
from pathlib import Path

import pytest
import torch

from neva_model.model import Neva
from neva_model.train.clip_pretrain import CaptionEncoder, clip_loss, layout_edit, one_word_edits, pretrain_vision_tower
from neva_model.train.initialize import initialize
from neva_model.train.neva_stages import neva_finetune, neva_pretrain, pool_features, pretrain_language_model
from neva_model.train.pool import ScenePool
from neva_model.train.recipe import Stage, model_config
from neva_model.train.scenes import COLORS, SHAPES, caption, random_scene
from neva_model.train.sequences import IGNORE, conversation_example, prompt_ids
from neva_model.train.vocabulary import save_tokenizer, task_corpus, train_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def _falls(losses: list[float], name: str) -> None:
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"{name}: loss went from {first:.4f} to {last:.4f}"


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, tensor in module.state_dict().items() if not torch.equal(tensor, before[name])}


def test_every_stage_lowers_its_loss_and_trains_only_its_part(tmp_path: Path):
    seed = int(torch.randint(1000, ()))  # from the test's own torch seed: a failure reproduces
    tokenizer = save_tokenizer(train_tokenizer(task_corpus(seed, num_scenes=200)), tmp_path, 128)
    model = initialize(Neva(model_config(tokenizer.vocab_size)))
    pool = ScenePool.generate(64, seed)

    before = _snapshot(model)
    _falls(pretrain_vision_tower(model.vision_tower, tokenizer, Stage(60, 16, 1e-3), seed), "clip")
    assert {name.split(".")[0] for name in _changed(before, model)} == {"vision_tower"}
    assert not any(p.requires_grad for p in model.vision_tower.parameters())

    before = _snapshot(model)
    _falls(pretrain_language_model(model, tokenizer, pool, Stage(12, 16, 3e-3), seed), "lm")
    assert {name.split(".")[0] for name in _changed(before, model)} == {"language_model", "lm_head"}

    features = pool_features(model, pool)
    assert features.shape == (64, model.config.image_tokens_per_image, model.config.vision.hidden_size)
    before = _snapshot(model)
    _falls(neva_pretrain(model, tokenizer, pool, features, Stage(24, 16, 3e-3), seed), "stage 1")
    assert {name.split(".")[0] for name in _changed(before, model)} == {"multi_modal_projector"}

    before = _snapshot(model)
    _falls(neva_finetune(model, tokenizer, pool, features, Stage(12, 16, 3e-3), seed), "stage 2")
    assert {name.split(".")[0] for name in _changed(before, model)} == {"multi_modal_projector", "language_model",
                                                                        "lm_head"}


def test_finetuning_supervises_only_the_answer(tmp_path: Path):
    tokenizer = save_tokenizer(train_tokenizer(task_corpus(0, num_scenes=50)), tmp_path, 128)
    turns = [("How many shapes are there?", "2"), ("Describe the image.", "a red circle and an orange square")]
    example = conversation_example(tokenizer, turns, image_tokens=5)
    supervised = [(i, t) for i, t in enumerate(example.targets) if t != IGNORE]
    answers = [t for _, a in turns for t in tokenizer.encode(a, add_bos=False) + [tokenizer.eos_token_id]]
    assert [t for _, t in supervised] == answers
    assert [example.ids[i + 1] for i, _ in supervised] == answers  # each target is the next input token
    assert example.ids.count(tokenizer.image_token_id) == 5
    first = prompt_ids(tokenizer, turns[0][0], 5)
    assert list(example.ids[:len(first)]) == first  # the first turn is what `neva ask` feeds the model
    assert tokenizer.decode(example.ids[len(first):], skip_special_tokens=False) == \
        "2 </s> user : describe the image. assistant : a red circle and an orange square </s>"


def test_one_word_edits_change_one_attribute_of_one_shape_each():
    rng = random.Random(random.randrange(2**32))
    for _ in range(100):
        scene = random_scene(rng)
        edits = one_word_edits(scene)
        per_shape = len(SHAPES) - 1 + len(COLORS) - 1
        assert len(edits) == per_shape * len(scene.shapes)
        assert len({caption(e) for e in edits} | {caption(scene)}) == len(edits) + 1  # all distinct
        for edit in edits:
            changed = [(a, b) for a, b in zip(scene.shapes, edit.shapes) if a != b]
            assert len(edit.shapes) == len(scene.shapes) and len(changed) == 1
            before, after = changed[0]
            assert (before.kind != after.kind) + (before.color != after.color) == 1


def test_layout_edit_changes_the_caption():
    rng = random.Random(random.randrange(2**32))
    for _ in range(200):
        scene = random_scene(rng)
        assert caption(layout_edit(scene, rng)) != caption(scene)


def test_clip_loss_counts_equal_captions_as_matches():
    """Two pictures with the same caption: each may match either copy, so perfect embeddings give a low loss
    (not log 2, which treating the twin as a negative would force)."""
    embeds = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    captions = ["a red circle", "a red circle", "a blue square"]
    loss = clip_loss(embeds, embeds, torch.tensor(math.log(100.0)), captions)
    assert loss.item() < 1e-6
    distinct = clip_loss(embeds, embeds, torch.tensor(math.log(100.0)), ["a red circle", "a red square", "x"])
    assert distinct.item() > 0.3  # the twin now competes with the true caption


def test_caption_encoder_refuses_captions_past_its_length():
    encoder = CaptionEncoder(vocab_size=10, max_length=4)
    assert encoder([[1, 2, 3, 4], [5]]).shape == (2, 64)
    with pytest.raises(ValueError, match="longest has 5 tokens"):
        encoder([[1, 2, 3, 4, 5]])
