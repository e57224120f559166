"""What a benchmark measures: one op at one shape, several implementations of it, and its work (bytes, FLOPs)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Case:
    op: str                                  # e.g. "rms_norm"
    label: str                               # the shape in words, e.g. "16384x4096 bf16 +residual"
    size: float                              # the x axis of the plots (hidden size, context length, ...)
    implementations: dict[str, Callable[[], object]]  # name -> a zero-argument call of one run on prepared inputs
    bytes: int | None = None                 # bytes each call must read + write at least (memory-bound ops)
    flops: float | None = None               # floating-point operations per call (compute-bound ops)
    missing: dict[str, str] = field(default_factory=dict)  # anchor -> why it was not measured
    backward: bool = False                   # the implementations run a backward pass
    tokens: int | None = None                # tokens each call produces (reported as tokens/s)
    # times the implementations itself: name -> ms, or an entry with "ms" and more (a load test's latencies)
    measure: Callable[[], dict[str, float | dict]] | None = None
