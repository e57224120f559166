"""The modules that communicate: row-parallel projections and the vocabulary-parallel embedding and lm head.

Each keeps the parameter names of the module it replaces (weight, bias), so checkpoints load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .collectives import TensorParallel
from .layout import Span


class RowParallelLinear(nn.Linear):
    """y = sum over ranks of x_rank @ W_rank^T, + bias: the rank's input features in, all output features out.
    The bias (whole, on every rank) is added once, after the all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel, device=None,
                 dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.tp = tp

    def forward(self, x: Tensor) -> Tensor:
        y = self.tp.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """nn.Embedding over the rank's vocabulary rows: ids outside them give zeros, and the all-reduce sums the one
    rank's row into every rank's output."""

    def __init__(self, vocab: Span, hidden_size: int, tp: TensorParallel, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab.size, hidden_size, device=device, dtype=dtype))
        self.vocab, self.tp = vocab, tp

    def forward(self, ids: Tensor) -> Tensor:
        local = ids - self.vocab.start
        outside = (local < 0) | (local >= self.vocab.size)
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(rows.masked_fill_(outside.unsqueeze(-1), 0))


class VocabParallelHead(nn.Module):
    """The lm head over the rank's vocabulary rows; every rank gets the whole vocabulary's logits (all-gather),
    the padding past the vocabulary cut off."""

    def __init__(self, vocab: Span, hidden_size: int, tp: TensorParallel, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab.size, hidden_size, device=device, dtype=dtype))
        self.vocab, self.tp = vocab, tp

    def forward(self, x: Tensor) -> Tensor:
        return self.tp.all_gather(F.linear(x, self.weight))[..., :self.vocab.full]
