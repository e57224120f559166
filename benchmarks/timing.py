"""Timing one call: the median of CUDA-event timings after warm-up, with the L2 cache flushed before each run.

On a CPU (the --quick smoke run) the same protocol uses wall-clock time and no flush.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current L2 (H100: 50 MB)


class Timer:
    def __init__(self, device: torch.device, warmup: int = 5, repeats: int = 30):
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def median_ms(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if self._flush is None:
            return self._median_wall_ms(fn)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for start, end in zip(starts, ends):
            self._flush.zero_()  # evict the inputs from L2: every run reads from HBM, as in a real model
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))

    def _median_wall_ms(self, fn: Callable[[], object]) -> float:
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
