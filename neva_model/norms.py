"""The norm layers of the model, run by neva_kernels: RMSNorm (LLaMA), LayerNorm (CLIP) and LayerNorm1P (Nemotron,
a zero-centred weight: y = norm(x) * (1 + weight) + bias). Given the residual stream, each adds x to it first and
returns (y, new residual) in one pass."""
from __future__ import annotations

import torch
from torch import Tensor, nn

import neva_kernels


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor, residual: Tensor | None = None):
        return neva_kernels.rms_norm(x, self.weight, self.eps, residual=residual)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm's parameters (weight, bias) and result; zero_centered_weight: NVIDIA's LayerNorm1P."""

    def __init__(self, size: int, eps: float, zero_centered_weight: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if zero_centered_weight else torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps, self.zero_centered_weight = eps, zero_centered_weight

    def forward(self, x: Tensor, residual: Tensor | None = None):
        return neva_kernels.layer_norm(x, self.weight, self.bias, self.eps, residual, self.zero_centered_weight)
