"""Accelerated transformers models against the stock ones on CPU in float32: logits by the tolerance rule, greedy
generation token for token, single prompts and left-padded batches (prefill, then decode on transformers' cache)."""
import pytest
import torch

from tests.integrations.hf_models import MODELS, accelerated_copy, assert_logits_by_rule, build, greedy, prompts

LENGTHS = {"single": [7], "left-padded batch": [5, 12, 9]}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", list(LENGTHS))
def test_logits_match_stock_by_rule(name, batch, cpu_backend):
    stock = build(name)
    assert_logits_by_rule(stock, accelerated_copy(stock), prompts(stock, LENGTHS[batch]), f"{name} {batch}")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", list(LENGTHS))
def test_greedy_generation_is_identical(name, batch, cpu_backend):
    stock = build(name)
    inputs = prompts(stock, LENGTHS[batch], seed=1)
    expected = greedy(stock, inputs)
    assert expected.shape[1] == inputs["input_ids"].shape[1] + 20
    assert torch.equal(greedy(accelerated_copy(stock), inputs), expected)
