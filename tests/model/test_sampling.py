"""The sampler: greedy, temperature, top-k and top-p draw from the distributions they promise."""
import pytest
import torch

from neva_kernels import NevaTypeError, NevaValueError
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


@pytest.mark.parametrize("bad", [
    dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5),
    dict(stop=("",)), dict(temperature=float("nan")), dict(temperature=float("inf")), dict(top_p=float("nan")),
    dict(seed=2**64), dict(seed=-1), dict(stop=5), dict(stop=("a", 3)),
])
def test_bad_sampling_parameters_are_refused(bad):
    with pytest.raises(NevaValueError, match=f"SamplingParams: '{next(iter(bad))}' must be"):
        SamplingParams(**bad)


@pytest.mark.parametrize("bad", [dict(max_new_tokens=2.0), dict(max_new_tokens=True), dict(top_k=1.5),
                                 dict(seed=1.0), dict(seed="1"), dict(temperature="0.5"), dict(ignore_eos=1)])
def test_sampling_parameters_of_the_wrong_type_are_refused(bad):
    with pytest.raises(NevaTypeError, match=f"SamplingParams: '{next(iter(bad))}' must be"):
        SamplingParams(**bad)


def test_a_str_stop_is_one_stop_string_and_seeds_span_torchs_range():
    assert SamplingParams(stop="purple").stop == ("purple",)
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")
    for seed in (0, 2**64 - 1):
        SamplingParams(seed=seed).generator("cpu")


def test_nan_logits_are_an_error_naming_the_rows():
    logits = torch.randn(3, 7)
    logits[2, 4] = float("nan")
    for params in (SamplingParams(), SamplingParams(temperature=1.0, seed=0)):
        with pytest.raises(NevaValueError, match=r"logits hold NaN in row\(s\) \[2\] \(of 3\)"):
            sample(logits, [params] * 3, [None] * 3)
    logits[2, 4] = -float("inf")  # a masked-out token is not an error
    assert sample(logits, [SamplingParams()] * 3, [None] * 3).shape == (3,)


def test_find_stop_finds_the_earliest_stop_string():
    assert find_stop("a cat. The end", ("end", ".")) == 5
    assert find_stop("a cat", ("dog",)) is None
