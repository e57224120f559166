"""Training examples as token ids with per-position targets, and the packed next-token loss over them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import Neva, packed_prefill_batch
from ..prompts import DEFAULT_IMAGE_PLACEHOLDER, build_prompt
from ..tokenizer import NevaTokenizer

IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    targets: tuple[int, ...]  # targets[t]: the token to predict after ids[t], or IGNORE (no loss there)


def _supervise(context: list[int], answer: list[int]) -> Example:
    """context + answer, with loss on predicting every answer token (the last context token predicts the first)."""
    ids = context + answer
    targets = [IGNORE] * (len(context) - 1) + answer + [IGNORE]
    return Example(tuple(ids), tuple(targets))


def prompt_ids(tokenizer: NevaTokenizer, question: str, image_tokens: int) -> list[int]:
    """The ids `neva ask` feeds the model: the llava-1.5 prompt with BOS, the placeholder expanded."""
    return tokenizer.expand_image_tokens(tokenizer.encode(build_prompt(question)), image_tokens, 1)


def answer_ids(tokenizer: NevaTokenizer, answer: str) -> list[int]:
    return tokenizer.encode(answer, add_bos=False) + [tokenizer.eos_token_id]


def conversation_example(tokenizer: NevaTokenizer, turns: list[tuple[str, str]], image_tokens: int) -> Example:
    """NeVA finetuning: (question, answer) turns in llava-1.5's training conversation, loss on every answer and
    its EOS only. The first turn is exactly the prompt `neva ask` builds; later turns follow the EOS of the
    answer before them ("... ASSISTANT: red</s>USER: {question} ASSISTANT:"), as llava-1.5's data does."""
    ids, targets = [], []
    for index, (question, answer) in enumerate(turns):
        context = prompt_ids(tokenizer, question, image_tokens) if index == 0 else \
            tokenizer.encode(f"USER: {question} ASSISTANT:", add_bos=False)
        turn = _supervise(context, answer_ids(tokenizer, answer))
        ids += turn.ids
        targets += turn.targets
    return Example(tuple(ids), tuple(targets))


def caption_example(tokenizer: NevaTokenizer, caption: str, image_tokens: int) -> Example:
    """NeVA pretraining (LLaVA's "plain" template): BOS, the image, then the caption."""
    context = [tokenizer.bos_token_id] + [tokenizer.image_token_id] * image_tokens
    return _supervise(context, answer_ids(tokenizer, caption))


def text_example(tokenizer: NevaTokenizer, question: str, answer: str) -> Example:
    """Language-model pretraining: the conversation without its image, loss on every token."""
    prompt = build_prompt(question).replace(DEFAULT_IMAGE_PLACEHOLDER + "\n", "")
    return _supervise([tokenizer.bos_token_id], tokenizer.encode(f"{prompt} {answer}", add_bos=False)
                      + [tokenizer.eos_token_id])


def packed_loss(model: Neva, examples: list[Example], image_features: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the supervised positions of `examples`, run as one packed batch.

    image_features [images, tokens, dim] fill the image-token rows of all examples, in order.
    """
    device = model.lm_head.weight.device
    ids = torch.tensor([t for e in examples for t in e.ids], device=device)
    targets = torch.tensor([t for e in examples for t in e.targets], device=device)
    embeds = model.embed(ids, image_features)
    hidden = model.language_model(embeds, packed_prefill_batch([len(e.ids) for e in examples], device))
    supervised = targets != IGNORE
    return F.cross_entropy(model.lm_head(hidden[supervised]), targets[supervised])
