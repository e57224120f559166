"""The two ceilings measured in the same run as the kernels: memory bandwidth and tensor-core throughput."""
from __future__ import annotations

import torch

from .timing import Timer


def copy_bandwidth_gbps(timer: Timer, megabytes: int = 1024) -> float:
    """Device-to-device copy of a large buffer, counting bytes read + written (GB/s)."""
    n = megabytes * 1024 * 1024
    src = torch.empty(n, dtype=torch.uint8, device=timer.device)
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


def matmul_tflops(timer: Timer, n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """A square matmul through cuBLAS (on a CPU: whatever torch uses), in TFLOP/s."""
    a = torch.randn(n, n, device=timer.device, dtype=dtype)
    b = torch.randn(n, n, device=timer.device, dtype=dtype)
    ms = timer.median_ms(lambda: a @ b)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12
