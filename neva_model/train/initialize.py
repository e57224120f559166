"""Initial weights for training from scratch (the modules' own defaults leave some tensors uninitialized)."""
from __future__ import annotations

import torch
from torch import nn

from ..model import Neva


@torch.no_grad()
def initialize(model: Neva, std: float = 0.02) -> Neva:
    """Normal(0, std) weights and embeddings (the class token too), zero biases, unit norm scales."""
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(parameter)
        elif parameter.dim() == 1 and "norm" in name:
            nn.init.ones_(parameter)
        else:
            nn.init.normal_(parameter, std=std)
    return model
