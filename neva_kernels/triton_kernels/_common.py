"""Facts shared by the Triton kernels: dtypes they take, dot precision, log2 units, unit-stride operands."""
from __future__ import annotations

import math

import torch
import triton.language as tl
from torch import Tensor

# float32 only under the interpreter: the GPU tiles are sized for 16-bit operands (float32 would overflow smem).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Softmax runs in log2 units (exp2 is one instruction): scores are scaled by log2(e), results scaled back by ln(2).
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
# The same values for use inside @triton.jit code, which reads only constexpr globals.
LOG2E_IN_KERNEL = tl.constexpr(LOG2E)
LN2_IN_KERNEL = tl.constexpr(LN2)


def dtype_refusal(kernels: str, dtype: torch.dtype, on_gpu: bool) -> str | None:
    """Why the triton `kernels` (e.g. "flash_attention kernels") cannot take `dtype`, or None when they can."""
    if dtype not in SUPPORTED_DTYPES:
        return f"the triton {kernels} take float16, bfloat16 or float32, got {dtype}"
    if on_gpu and dtype == torch.float32:
        return "the triton kernels take float16/bfloat16 on a GPU (float32 runs under the interpreter)"
    return None


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: exact fp32 products for float32 operands, tensor cores (tf32 or 16-bit) otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def unit_stride(t: Tensor) -> Tensor:
    """`t` with stride 1 along its last dimension (vector loads); a copy only when it is strided there."""
    return t if t.stride(-1) == 1 else t.contiguous()
