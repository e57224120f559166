"""A few steps of every training stage: each loss falls, and each stage trains only what the recipe says."""
import math
import random
from pathlib import Path

import pytest
import torch

from neva_model.model import Neva
from neva_model.train.clip_pretrain import NEAR_MISSES, near_miss, pretrain_vision_tower
from neva_model.train.initialize import initialize
from neva_model.train.neva_stages import neva_finetune, neva_pretrain, pool_features, pretrain_language_model
from neva_model.train.pool import ScenePool
from neva_model.train.recipe import Stage, model_config
from neva_model.train.scenes import caption, random_scene
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
    seed = random.randrange(1000)
    tokenizer = save_tokenizer(train_tokenizer(task_corpus(seed, num_scenes=200)), tmp_path, 128)
    model = initialize(Neva(model_config(tokenizer.vocab_size)))
    pool = ScenePool.generate(64, seed)

    before = _snapshot(model)
    clip = pretrain_vision_tower(model.vision_tower, tokenizer, Stage(60, 16, 1e-3), seed)
    # Contrastive training first sinks to chance (every caption equally likely), then must go below it.
    chance = (math.log((1 + len(NEAR_MISSES)) * 16) + math.log(16)) / 2
    assert sum(clip[-5:]) / 5 < chance - 0.1, f"clip: loss {clip[-5:]} not below chance {chance:.4f}"
    assert {name.split(".")[0] for name in _changed(before, model)} == {"vision_tower"}
    assert not any(p.requires_grad for p in model.vision_tower.parameters())

    before = _snapshot(model)
    _falls(pretrain_language_model(model, tokenizer, pool, Stage(12, 16, 3e-3), seed), "lm")
    assert {name.split(".")[0] for name in _changed(before, model)} == {"language_model", "lm_head"}

    features = pool_features(model, pool)
    assert features.shape == (64, model.config.image_tokens_per_image, model.config.vision.hidden_size)
    before = _snapshot(model)
    _falls(neva_pretrain(model, tokenizer, pool, features, Stage(12, 16, 3e-3), seed), "stage 1")
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


@pytest.mark.parametrize("change", sorted(set(NEAR_MISSES)))
def test_near_miss_changes_the_caption(change):
    rng = random.Random(random.randrange(2**32))
    for _ in range(200):
        scene = random_scene(rng)
        missed = near_miss(scene, rng, change)
        assert caption(missed) != caption(scene)
        if change != "layout":
            assert len(missed.shapes) == len(scene.shapes)
            changed = [(a, b) for a, b in zip(scene.shapes, missed.shapes) if a != b]
            assert len(changed) == 1 and getattr(changed[0][0], change) != getattr(changed[0][1], change)
