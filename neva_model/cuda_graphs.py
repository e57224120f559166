"""Decode steps replayed from CUDA graphs: one graph per batch-size bucket, captured on first use (as vLLM does).

A CUDA graph replays a fixed sequence of kernels on fixed addresses and shapes, so the host launches a whole
decode step with one call instead of a few hundred. A step over the first `rows` batch slots runs the graph of
the smallest bucket >= rows; the extra rows are idle slots (seq_len 0, slot -1), which write nothing and whose
logits nobody reads. The step function must read its inputs only from tensors whose addresses never change
(the engine's step tensors, sliced to the bucket).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from neva_kernels import NevaValueError


def batch_size_buckets(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, then every multiple of 8, up to and including max_batch_size (vLLM's capture sizes)."""
    sizes = {b for b in (1, 2, 4) if b < max_batch_size} | set(range(8, max_batch_size, 8)) | {max_batch_size}
    return tuple(sorted(sizes))


class BucketedSteps:
    """Decode steps run per batch-size bucket: a step over the first `rows` slots runs the bucket's version."""

    def __init__(self, max_batch_size: int):
        self.buckets = batch_size_buckets(max_batch_size)

    def bucket(self, rows: int) -> int:
        """The smallest bucket >= rows."""
        return next(b for b in self.buckets if b >= rows)


class DecodeGraphs(BucketedSteps):
    """The CUDA graphs of `step(batch_size) -> logits`, one per bucket, sharing one memory pool."""

    def __init__(self, step: Callable[[int], Tensor], max_batch_size: int, device: torch.device):
        if device.type != "cuda":
            raise NevaValueError(f"Engine: cuda_graph needs the model on a CUDA device, it is on {device}")
        super().__init__(max_batch_size)
        self.step, self.device = step, device
        self.captured: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}  # bucket -> graph, its logits
        self._pool = None

    def run(self, rows: int) -> Tensor:
        """The logits of a step over the first `rows` slots: [bucket(rows), vocab], replayed from its graph."""
        bucket = self.bucket(rows)
        if bucket not in self.captured:
            self.captured[bucket] = self._capture(bucket)
        graph, logits = self.captured[bucket]
        graph.replay()
        return logits

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        # Warm-up outside the capture (Triton compiles and autotunes, caches are built). It runs the real step,
        # so it writes this step's K/V once more than the replay will: the same values to the same slots.
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self.step(bucket)
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self.step(bucket)
        self._pool = graph.pool()  # the next bucket's graph reuses this memory (graphs never run at once)
        return graph, logits
