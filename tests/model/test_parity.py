"""neva_model against transformers' LLaVA on CPU in float32: same logits, same greedy answers."""
import pytest
import torch

from neva_model import Engine, Request, SamplingParams, load_neva

from tests.model.tiny_llava import IMAGE_SIZE, random_prompt

pytestmark = pytest.mark.usefixtures("single_thread")


def test_logits_match_transformers(checkpoint):
    case, hf, directory = checkpoint
    model = load_neva(directory)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.tensor([random_prompt(case, 7, image_at=1, generator=generator),
                              random_prompt(case, 7, image_at=5, generator=generator)])
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    with torch.no_grad():
        expected = hf(input_ids=input_ids, pixel_values=pixel_values).logits
        logits = model.forward_expanded(input_ids, pixel_values)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(checkpoint):
    case, hf, directory = checkpoint
    model = load_neva(directory)
    generator = torch.Generator().manual_seed(2)
    requests = [Request(random_prompt(case, length, image_at=1, generator=generator),
                        torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                        SamplingParams(max_new_tokens=20)) for length in (3, 11)]
    engine = Engine(model, max_batch_size=2, max_seq_len=64, block_size=8, value_checks=True)
    completions = engine.generate(requests)
    for request, completion in zip(requests, completions):
        expected = hf.generate(input_ids=torch.tensor([request.input_ids]), pixel_values=request.images,
                               max_new_tokens=20, do_sample=False)[0, len(request.input_ids):]
        assert completion.token_ids == expected.tolist()
        assert completion.finish_reason == "length"
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_batched_generation_equals_one_by_one(checkpoint):
    """Requests of different lengths decoded together (packed prefill, paged decode) answer as each one alone."""
    case, _, directory = checkpoint
    if case.family != "nemotron":
        pytest.skip("tests/model/test_engine.py covers the LLaMA decoder")
    model = load_neva(directory)
    generator = torch.Generator().manual_seed(3)
    requests = [Request(random_prompt(case, length, image_at=length // 2, generator=generator),
                        torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                        SamplingParams(max_new_tokens=20)) for length in (2, 9, 5)]
    together = Engine(model, max_batch_size=3, max_seq_len=64, block_size=4, value_checks=True).generate(requests)
    for request, completion in zip(requests, together):
        alone = Engine(model, max_batch_size=1, max_seq_len=64, block_size=8).generate([request])[0]
        assert completion.token_ids == alone.token_ids and len(alone.token_ids) == 20
