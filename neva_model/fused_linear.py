"""FusedLinear: several projections of the same input stacked into one matmul (q|k|v, gate|up)."""
from __future__ import annotations

from torch import nn


class FusedLinear(nn.Linear):
    """An nn.Linear whose output rows are named parts: one GEMM instead of several, split after.

    Checkpoints store the parts as separate tensors; ``part_rows`` tells the weight loader where each goes.
    """

    def __init__(self, in_features: int, parts: dict[str, int], bias: bool, device=None, dtype=None):
        super().__init__(in_features, sum(parts.values()), bias=bias, device=device, dtype=dtype)
        self.part_sizes = dict(parts)

    def part_rows(self, part: str) -> slice:
        start = 0
        for name, size in self.part_sizes.items():
            if name == part:
                return slice(start, start + size)
            start += size
        raise KeyError(part)

    def split(self, y):
        return y.split(list(self.part_sizes.values()), dim=-1)
