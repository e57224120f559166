"""The whole model: NeVA (llava-1.5-7b preset, random weights, bf16) against HF transformers' LLaVA (sdpa).

- time to first token: one 336 px image + a 32-token question, prefill and the first sampled token;
- one decode step at batch 1, 8 and 32 with 512-token contexts: its time gives tokens/s, and its bytes (all
  weights + the K/V it reads) against the measured copy bandwidth give the decode roofline.
--quick uses the "tiny" preset in float32 on whatever device is present.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from neva_model import Engine, Neva, NevaConfig, Request, SamplingParams

from .case import Case

QUESTION_TOKENS, CONTEXT, DECODE_BATCHES = 32, 512, (1, 8, 32)


def random_model(config: NevaConfig, device: torch.device, dtype: torch.dtype) -> Neva:
    """A Neva with N(0, 0.02) weights (unit norms), built on the meta device and materialized on `device`."""
    with torch.device("meta"):
        model = Neva(config)
    model = model.to_empty(device=device)
    for name, p in model.named_parameters():
        torch.nn.init.ones_(p) if "norm" in name else torch.nn.init.normal_(p, std=0.02)
    return model.to(dtype).eval()


def hf_llava(config: NevaConfig, device: torch.device, dtype: torch.dtype):
    """transformers' LlavaForConditionalGeneration of the same shapes, sdpa attention, random weights."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    v, t = config.vision, config.text
    hf_config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                                       num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                                       image_size=v.image_size, patch_size=v.patch_size, projection_dim=v.hidden_size),
        text_config=LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                                num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                                rms_norm_eps=t.norm_eps, max_position_embeddings=t.max_position_embeddings),
        image_token_index=config.image_token_index, vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy)
    hf_config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlavaForConditionalGeneration(hf_config)
    return model.to(dtype).eval()


def _prompt(config: NevaConfig, generator: torch.Generator) -> list[int]:
    question = torch.randint(3, config.text.vocab_size - 100, (QUESTION_TOKENS,), generator=generator).tolist()
    return [1] + [config.image_token_index] * config.image_tokens_per_image + question


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _time_to_first_token(neva: Neva, hf, config: NevaConfig, device: torch.device) -> Case:
    g = torch.Generator().manual_seed(0)
    ids = _prompt(config, g)
    pixels = torch.randn(1, 3, config.vision.image_size, config.vision.image_size, generator=g).to(device, neva.lm_head.weight.dtype)
    engine = Engine(neva, max_batch_size=1, max_seq_len=len(ids) + 1)
    request = Request(ids, pixels, SamplingParams(max_new_tokens=1, ignore_eos=True))
    hf_ids = torch.tensor([ids], device=device)

    @torch.inference_mode()
    def transformers_first_token():
        return hf.generate(input_ids=hf_ids, pixel_values=pixels, max_new_tokens=1, do_sample=False)
    return Case(op="time to first token", label=f"1 image {config.vision.image_size}px + {QUESTION_TOKENS} tokens",
                size=1, implementations={"neva-engine": lambda: engine.generate([request]),
                                         "hf-transformers-sdpa": transformers_first_token})


def _decode_step(neva: Neva, hf, config: NevaConfig, device: torch.device, batch: int) -> Case:
    """One decode step of `batch` sequences holding CONTEXT tokens each (text only: decode does not see pixels)."""
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, config.text.vocab_size - 100, (batch, CONTEXT - 1), generator=g)
    engine = Engine(neva, max_batch_size=batch, max_seq_len=CONTEXT + 1)
    engine.generate([Request(p.tolist(), None, SamplingParams(max_new_tokens=1, ignore_eos=True)) for p in prompts])
    # The engine frees finished sequences; occupy the step tensors as a running batch at CONTEXT tokens would.
    for i in range(batch):
        engine.allocator.allocate(("bench", i), CONTEXT)
    engine.step_block_tables.copy_(engine.allocator.block_tables([("bench", i) for i in range(batch)],
                                                                 engine.step_block_tables.shape[1], device))
    engine.step_seq_lens.fill_(CONTEXT)
    engine.step_positions.fill_(CONTEXT - 1)
    engine.step_slots.copy_(torch.tensor([engine.allocator.slots(("bench", i), CONTEXT - 1)[0] for i in range(batch)]))
    text = config.text
    kv_bytes = 2 * text.num_layers * batch * CONTEXT * text.num_kv_heads * text.attention_head_dim * neva.lm_head.weight.element_size()
    decoder_bytes = _weight_bytes(neva.language_model) + _weight_bytes(neva.lm_head)

    from transformers import DynamicCache
    with torch.inference_mode():
        cache = DynamicCache(config=hf.config.text_config)
        hf(input_ids=prompts.to(device), past_key_values=cache, use_cache=True)
    step_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)

    @torch.inference_mode()
    def transformers_step():
        hf(input_ids=step_ids, past_key_values=cache, use_cache=True)
        cache.crop(-1)  # drop the step's token: the next timed step sees the same context

    return Case(op="decode step", label=f"batch {batch} x {CONTEXT} context", size=batch, tokens=batch,
                bytes=decoder_bytes + kv_bytes,
                implementations={"neva-engine": torch.inference_mode()(engine.decode_forward),
                                 "hf-transformers-sdpa": transformers_step})


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    gpu = device.type == "cuda" and not quick
    config = NevaConfig.from_name("llava-1.5-7b" if gpu else "tiny")
    dtype = torch.bfloat16 if gpu else torch.float32
    neva, hf = random_model(config, device, dtype), hf_llava(config, device, dtype)
    yield _time_to_first_token(neva, hf, config, device)
    for batch in DECODE_BATCHES if gpu else (1, 4):
        yield _decode_step(neva, hf, config, device, batch)
