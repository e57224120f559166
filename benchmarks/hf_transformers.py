"""transformers models, stock (SDPA) against the same model after neva_kernels.integrations.transformers.accelerate.

- prefill: one 336 px image + a 32-token question through LlavaForConditionalGeneration (last-token logits);
- decode step: one token at batch 1 and 8 over a 512-token transformers DynamicCache (tokens/s);
- training step: forward and backward of the language-modelling loss on that prompt (no optimizer state).
LLaVA-1.5-7B shapes, random weights, bf16 on a GPU; --quick: the "tiny" preset in float32 on any device.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from neva_model import NevaConfig

from .case import Case
from .end_to_end import CONTEXT, QUESTION_TOKENS, hf_llava

STOCK, NEVA = "hf-transformers-sdpa", "neva-accelerated"


def _prompt(config: NevaConfig, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    question = torch.randint(3, config.text.vocab_size - 100, (QUESTION_TOKENS,), generator=g)
    ids = torch.cat((torch.tensor([1] + [config.image_token_index] * config.image_tokens_per_image), question))
    pixels = torch.randn(1, 3, config.vision.image_size, config.vision.image_size, generator=g)
    return ids[None].to(device), pixels.to(device, dtype)


def _prefill(models: dict, ids: torch.Tensor, pixels: torch.Tensor) -> Case:
    def run(model):
        return torch.inference_mode()(lambda: model(input_ids=ids, pixel_values=pixels, logits_to_keep=1))
    return Case(op="transformers prefill", label=f"1 image + {QUESTION_TOKENS} tokens", size=ids.shape[1],
                tokens=ids.shape[1], implementations={name: run(model) for name, model in models.items()})


def _decode_step(models: dict, config: NevaConfig, device: torch.device, batch: int) -> Case:
    """One token per sequence over CONTEXT - 1 cached tokens; the step's token is cropped again after each run."""
    from transformers import DynamicCache
    g = torch.Generator().manual_seed(batch)
    context = torch.randint(3, config.text.vocab_size - 100, (batch, CONTEXT - 1), generator=g).to(device)
    step_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)

    def run(model):
        with torch.inference_mode():
            cache = DynamicCache(config=model.config.text_config)
            model(input_ids=context, past_key_values=cache, use_cache=True, logits_to_keep=1)

        @torch.inference_mode()
        def step():
            model(input_ids=step_ids, past_key_values=cache, use_cache=True)
            cache.crop(-1)
        return step
    return Case(op="transformers decode step", label=f"batch {batch} x {CONTEXT} context", size=batch, tokens=batch,
                implementations={name: run(model) for name, model in models.items()})


def _training_step(models: dict, ids: torch.Tensor, pixels: torch.Tensor) -> Case:
    def run(model):
        def step():
            model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
        return step
    return Case(op="transformers training step", label=f"forward + backward, 1 image + {QUESTION_TOKENS} tokens",
                size=ids.shape[1], tokens=ids.shape[1], backward=True,
                implementations={name: run(model) for name, model in models.items()})


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    from neva_kernels.integrations.transformers import accelerate
    gpu = device.type == "cuda" and not quick
    config = NevaConfig.from_name("llava-1.5-7b" if gpu else "tiny")
    dtype = torch.bfloat16 if gpu else torch.float32
    stock = hf_llava(config, device, dtype)
    models = {STOCK: stock, NEVA: accelerate(copy.deepcopy(stock))}
    ids, pixels = _prompt(config, device, dtype)
    yield _prefill(models, ids, pixels)
    for batch in (1, 8) if gpu else (1, 4):
        yield _decode_step(models, config, device, batch)
    yield _training_step(models, ids, pixels)
