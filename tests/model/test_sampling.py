"""The sampler: greedy, temperature, top-k and top-p draw from the distributions they promise."""
import pytest
import torch

from neva_kernels import NevaValueError
from neva_model.sampling import SamplingParams, find_stop, sample

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)


def _frequencies(params: SamplingParams, draws: int = 4000) -> torch.Tensor:
    logits = PROBS.log().expand(draws, -1)
    generator = torch.Generator().manual_seed(params.seed)
    tokens = sample(logits, [params] * draws, [generator] * draws)
    return torch.bincount(tokens, minlength=4).float() / draws


def test_zero_temperature_is_argmax_per_row():
    logits = torch.randn(5, 33)
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_k=1), SamplingParams(),
              SamplingParams(temperature=2.0, top_p=1e-6), SamplingParams()]
    assert torch.equal(sample(logits, params, [None] * 5), logits.argmax(dim=-1))


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(temperature=1.0, seed=1), PROBS),
    (SamplingParams(temperature=0.5, seed=2), PROBS ** 2 / (PROBS ** 2).sum()),
    (SamplingParams(temperature=1.0, top_k=2, seed=3), torch.tensor([0, 0.5, 0, 0.3]) / 0.8),
    # top_p 0.7: tokens 1 and 3 (the mass before token 2 is 0.8 >= 0.7); top_k 3 does not bind
    (SamplingParams(temperature=1.0, top_k=3, top_p=0.7, seed=4), torch.tensor([0, 0.5, 0, 0.3]) / 0.8),
])
def test_sampled_frequencies_follow_the_filtered_distribution(params, expected):
    frequencies = _frequencies(params)
    assert (frequencies - expected).abs().max() < 0.03  # 4000 draws: standard error <= 0.008
    assert torch.equal(frequencies == 0, expected == 0)


def test_a_seed_fixes_the_draws():
    params = SamplingParams(temperature=1.0, seed=9)
    assert torch.equal(_frequencies(params, 50), _frequencies(params, 50))


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(stop=("",))])
def test_bad_sampling_parameters_are_refused(bad):
    with pytest.raises(NevaValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_find_stop_finds_the_earliest_stop_string():
    assert find_stop("a cat. The end", ("end", ".")) == 5
    assert find_stop("a cat", ("dog",)) is None
