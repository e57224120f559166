"""Choosing the next token: greedy, or temperature / top-k / top-p sampling with per-request seeds; stop rules."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neva_kernels import NevaTypeError, NevaValueError
from neva_kernels.errors import expect_finite, expect_int


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p
    seed: int | None = None  # None: torch's global generator
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings (needs a detokenizer); a str: one
    ignore_eos: bool = False

    def __post_init__(self):
        where = "SamplingParams"
        expect_int(where, "max_new_tokens", self.max_new_tokens, minimum=1)
        expect_finite(where, "temperature", self.temperature, minimum=0.0)
        expect_int(where, "top_k", self.top_k, minimum=0)
        expect_finite(where, "top_p", self.top_p, 0.0, 1.0, above_minimum=True)
        if self.seed is not None:  # the range torch.Generator.manual_seed takes
            expect_int(where, "seed", self.seed, 0, 2**64 - 1)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop  # a str is one stop string, not letters
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise NevaValueError(f"{where}: 'stop' must be a string or a sequence of non-empty strings, "
                                 f"got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        if not isinstance(self.ignore_eos, bool):
            raise NevaTypeError(f"{where}: 'ignore_eos' must be a bool, got {type(self.ignore_eos).__name__}")

    def generator(self, device) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


def _filter_top_k_top_p(sorted_logits: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """Set to -inf the sorted (descending) logits outside each row's top-k and top-p sets; the first stays."""
    ranks = torch.arange(sorted_logits.shape[-1], device=sorted_logits.device)[None]
    outside_k = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    probs = sorted_logits.masked_fill(outside_k, -torch.inf).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above this one
    outside_p = mass_before >= top_p[:, None]
    return sorted_logits.masked_fill(outside_k | outside_p, -torch.inf)


def sample(logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> Tensor:
    """Next token per row of logits [B, vocab] under each row's params -> LongTensor [B]."""
    logits = logits.float()
    nan_rows = torch.isnan(logits).any(dim=-1).nonzero().flatten().tolist()  # argmax would pick a NaN, silently
    if nan_rows:
        raise NevaValueError(f"sample: the model's logits hold NaN in row(s) {nan_rows} (of {logits.shape[0]}); "
                             "the weights or the inputs are not finite")
    greedy = logits.argmax(dim=-1)
    temperature = torch.tensor([p.temperature for p in params], device=logits.device)
    if not bool((temperature > 0).any()):
        return greedy
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    top_k = torch.tensor([p.top_k for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device)
    probs = _filter_top_k_top_p(sorted_logits, top_k, top_p).softmax(dim=-1)
    # argmax(p / e) with e ~ Exp(1) draws from p (the exponential race), one seeded generator per row.
    noise = torch.stack([torch.empty_like(row).exponential_(generator=g) for row, g in zip(probs, generators)])
    choice = order.gather(-1, (probs / noise).argmax(dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(temperature > 0, choice, greedy)


def find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in text, or None."""
    starts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(starts) if starts else None
