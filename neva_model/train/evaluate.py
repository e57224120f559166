"""Greedy answers through the generation engine, and accuracy per question type on fresh scenes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import Tensor

from ..generate import Completion, Engine, Request
from ..model import Neva
from ..sampling import SamplingParams
from ..tokenizer import NevaTokenizer
from .pool import ScenePool
from .scenes import QA, QUESTION_TYPES
from .sequences import prompt_ids

MAX_ANSWER_TOKENS = 24  # the longest caption is 17 tokens with its EOS


@dataclass(frozen=True)
class Asked:
    question: str
    pixels: Tensor  # [1, 3, S, S]


def answer(model: Neva, tokenizer: NevaTokenizer, asked: list[Asked], batch_size: int = 64) -> list[Completion]:
    """Greedy completions of every question, batch_size sequences at a time in one engine call."""
    tokens = model.config.image_tokens_per_image
    requests = [Request(prompt_ids(tokenizer, a.question, tokens), a.pixels,
                        SamplingParams(max_new_tokens=MAX_ANSWER_TOKENS)) for a in asked]
    longest = max((len(r.input_ids) for r in requests), default=0)
    engine = Engine(model, max_batch_size=batch_size, max_seq_len=longest + MAX_ANSWER_TOKENS,
                    detokenize=tokenizer.decode)
    return engine.generate(requests)


def questions_of(pool: ScenePool) -> tuple[list[Asked], list[QA]]:
    """Every question of every scene of the pool, with its picture, and the questions with their true answers."""
    asked, qas = [], []
    pixels = [p[i:i + 1] for p in pool.picture_chunks() for i in range(len(p))]
    for picture, scene_qas in zip(pixels, pool.qas):
        for qa in scene_qas:
            asked.append(Asked(qa.question, picture))
            qas.append(qa)
    return asked, qas


def score(qas: list[QA], completions: list[Completion]) -> dict:
    """{question type: {"correct", "total", "accuracy"}}: an answer is correct when it is exactly the true one."""
    correct, total = Counter(), Counter(qa.kind for qa in qas)
    for qa, completion in zip(qas, completions):
        correct[qa.kind] += completion.text == qa.answer
    return {kind: {"correct": correct[kind], "total": total[kind], "accuracy": correct[kind] / total[kind]}
            for kind in QUESTION_TYPES if total[kind]}


def accuracy_by_type(model: Neva, tokenizer: NevaTokenizer, pool: ScenePool, batch_size: int = 64) -> dict:
    """score() of the greedy answers to every question of every scene of the pool."""
    asked, qas = questions_of(pool)
    return score(qas, answer(model, tokenizer, asked, batch_size))
