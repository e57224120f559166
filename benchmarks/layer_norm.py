"""layer_norm: neva's kernels against PyTorch eager (F.layer_norm), torch.compile of it and, where installed,
Liger-Kernel's Triton LayerNorm, as GB/s and a share of the copy bandwidth measured in the same run.

Hidden sizes 1024 (CLIP ViT-L, the vision tower's LayerNorms), 4096, 6144 and 8192 (Nemotron decoders), bf16,
16384 rows: the plain LayerNorm with bias (every anchor computes it), and Nemotron's LayerNorm1P fused with the
residual add (zero-centred weight; eager and compile add the residual and 1 to the weight themselves).
quick: tiny float32 shapes that run on CPU in seconds.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

import neva_kernels as nk

from .case import Case
from .memory_bound import _implementations

ROWS, HIDDEN_SIZES = 16384, (1024, 4096, 6144, 8192)


def _liger() -> tuple[Callable | None, str | None]:
    """Liger-Kernel's layer_norm autograd function, or why it is missing."""
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    except ImportError as error:
        return None, f"liger_kernel is not installed ({error})"
    return LigerLayerNormFunction.apply, None


def _eager(x, weight, bias, eps, residual, zero_centered_weight):
    """What a model without a fused kernel runs: the residual add, then F.layer_norm (with 1 + weight)."""
    h = x if residual is None else x + residual
    y = F.layer_norm(h, h.shape[-1:], weight + 1 if zero_centered_weight else weight, bias, eps)
    return y if residual is None else (y, h)


def _case(rows: int, hidden: int, nemotron: bool, dtype: torch.dtype, device: torch.device, quick: bool) -> Case:
    x = torch.randn(rows, hidden, dtype=dtype, device=device)
    weight = torch.rand(hidden, dtype=dtype, device=device) - (0.5 if nemotron else -0.5)
    bias = torch.randn(hidden, dtype=dtype, device=device)
    residual = torch.randn_like(x) if nemotron else None
    args = (x, weight, bias, 1e-5, residual, nemotron)
    anchors, liger_missing = {}, {}
    liger, reason = _liger()
    if nemotron:
        liger_missing["liger-layer_norm"] = "Liger's LayerNorm has no zero-centred weight or fused residual"
    elif liger is None:
        liger_missing["liger-layer_norm"] = reason
    elif device.type != "cuda":
        liger_missing["liger-layer_norm"] = "Liger's kernels run on CUDA tensors"
    else:
        anchors["liger-layer_norm"] = lambda: liger(x, weight, bias, 1e-5)
    implementations, missing = _implementations("layer_norm", nk.layer_norm, args, device, quick,
                                                eager=lambda: _eager(*args), anchors=anchors)
    streams = 4 if nemotron else 2  # x (+ residual) read, y (+ updated residual) written
    return Case(op="layer_norm", label=f"{rows}x{hidden} {str(dtype).removeprefix('torch.')}"
                                       f"{' 1p +residual' if nemotron else ''}",
                size=hidden, implementations=implementations, missing={**missing, **liger_missing},
                bytes=(streams * rows + 2) * hidden * x.element_size())


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    if quick:
        for hidden, nemotron in ((256, False), (384, True)):
            yield _case(64, hidden, nemotron, torch.float32, device, quick)
        return
    for hidden in HIDDEN_SIZES:
        for nemotron in (False, True):
            yield _case(ROWS, hidden, nemotron, torch.bfloat16, device, quick)
