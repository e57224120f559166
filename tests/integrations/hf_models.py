"""Tiny random transformers models for the integration tests, and the prompts and comparisons they share.

The configurations are chosen to differ from the usual: head_dim != hidden / heads, GQA 3:1 and 2:1, MQA, linear
rope scaling, Qwen2's q/k/v biases, a Mistral sliding window wider than the prompts (the mask is then checked and
found causal), LLaVA with a list of vision feature layers.
"""
from __future__ import annotations

import copy
import zlib

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from neva_kernels.integrations.transformers import accelerate
from tests.helpers import assert_close_by_rule
from tests.model.tiny_llava import IMAGE_SIZE, TinyLlava, build_hf_model

VOCAB = 96
LLAVA = TinyLlava("llava-gqa3-headdim24-layers", heads=6, kv_heads=2, hidden=96, head_dim=24, feature_layer=(-2, 1),
                  rope_theta=100.0)
# initializer_range 0.2: random logits far enough apart that greedy choices are not near-ties.
_TEXT = dict(vocab_size=VOCAB, intermediate_size=80, num_hidden_layers=2, initializer_range=0.2, bos_token_id=1,
             eos_token_id=None, pad_token_id=0, max_position_embeddings=256)
TEXT_MODELS = {
    "llama-gqa3-headdim24-linear-rope": lambda: LlamaForCausalLM(LlamaConfig(
        hidden_size=72, num_attention_heads=6, num_key_value_heads=2, head_dim=24,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}, **_TEXT)),
    "qwen2-gqa2-bias": lambda: Qwen2ForCausalLM(Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, **_TEXT)),
    "mistral-mqa-window48": lambda: MistralForCausalLM(MistralConfig(
        hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=16, sliding_window=48, **_TEXT)),
}
MODELS = [*TEXT_MODELS, "llava"]


def build(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The named model with weights fixed by its name, in eval mode."""
    if name == "llava":
        model = build_hf_model(LLAVA)
        model.generation_config.pad_token_id = 0
    else:
        torch.manual_seed(zlib.crc32(name.encode()))
        model = TEXT_MODELS[name]()
    return model.to(device, dtype).eval()


def accelerated_copy(model):
    return accelerate(copy.deepcopy(model))


def is_llava(model) -> bool:
    return hasattr(model.config, "vision_config")


def prompts(model, lengths: list[int], seed: int = 0) -> dict:
    """Inputs of a left-padded batch of random prompts of `lengths` (LLaVA: each holds one image's tokens)."""
    generator = torch.Generator().manual_seed(seed)
    device = model.device
    if is_llava(model):
        rows = [torch.tensor(_llava_prompt(length, generator)) for length in lengths]
    else:
        rows = [torch.randint(3, VOCAB, (length,), generator=generator) for length in lengths]
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):], attention_mask[i, width - len(row):] = row, 1
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if is_llava(model):
        pixels = torch.randn(len(rows), 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        inputs["pixel_values"] = pixels.to(device, model.dtype)
    return inputs


def _llava_prompt(length: int, generator: torch.Generator) -> list[int]:
    text = torch.randint(3, LLAVA.image_token_index, (length,), generator=generator).tolist()
    return text[:1] + [LLAVA.image_token_index] * LLAVA.image_tokens + text[1:]


def as_dtype(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def assert_logits_by_rule(stock, accelerated, inputs: dict, what: str) -> None:
    """The accelerated model's logits against the stock model in float64 (the truth), by DESIGN.md's rule with the
    stock model in the test's dtype as the baseline; compared where the attention mask holds real tokens."""
    truth_model = copy.deepcopy(stock).double()
    with torch.no_grad():
        truth = truth_model(**as_dtype(inputs, torch.float64)).logits
        baseline, out = stock(**inputs).logits, accelerated(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert_close_by_rule(out[real], truth[real], baseline[real], what)


def greedy(model, inputs: dict, tokens: int = 20) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

