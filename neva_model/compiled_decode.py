"""Decode steps compiled by torch.compile (gpt-fast's route): one compilation per batch-size bucket.

Eager, a decode step pays Python and PyTorch's dispatch for every op of every layer, which at small widths
costs more than the arithmetic (benchmarks/host_overhead.py). Compiled, the ops of the torch backend are traced
as PyTorch maths (neva_kernels.ops._library: trace_torch_backend) and fused by inductor, and the kernels of the
other backends are called as opaque ops, so a step is a few calls per layer. A step over the first `rows` slots
runs the compilation of the smallest bucket >= rows, as the CUDA graphs do (neva_model.cuda_graphs); the first
step of each bucket pays the compilation (tens of seconds on a CPU). Greedy answers equal the eager path's.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .cuda_graphs import BucketedSteps


class CompiledDecode(BucketedSteps):
    """`step(batch_size) -> logits` compiled without graph breaks, specialized per bucket."""

    def __init__(self, step: Callable[[int], Tensor], max_batch_size: int):
        super().__init__(max_batch_size)
        # One compiled function with a static batch size: each bucket is one specialization (a recompilation,
        # which dynamo allows up to its recompile_limit per function: raised to the number of buckets in `run`).
        self.compiled = torch.compile(step, fullgraph=True, dynamic=False)

    def run(self, rows: int) -> Tensor:
        """The logits of a step over the first `rows` slots: [bucket(rows), vocab]."""
        limit = max(len(self.buckets), torch._dynamo.config.recompile_limit)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return self.compiled(self.bucket(rows))
