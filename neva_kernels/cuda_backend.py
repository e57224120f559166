"""The cuda backend: hand-written CUDA C++ in the compiled extension neva_kernels._C (torch.ops.neva_cuda)."""
from __future__ import annotations

import importlib
import importlib.util

import torch

from . import backends


def _load_extension() -> str | None:
    """Import neva_kernels._C (which registers torch.ops.neva_cuda.*); returns why it failed, or None."""
    if importlib.util.find_spec("neva_kernels._C") is None:
        return ("neva_kernels._C was not built: `pip install -e . --no-build-isolation` builds it where nvcc and "
                "a CUDA build of torch are present (NEVA_BUILD_CUDA=1 makes a failed build an error)")
    try:
        importlib.import_module("neva_kernels._C")
    except ImportError as error:
        return f"neva_kernels._C is built but does not load: {error}"
    return None


LOAD_ERROR = _load_extension()
backends.set_backend_missing("cuda", LOAD_ERROR)


def build_info() -> str:
    """The CUDA toolkit and GPU architectures the extension was compiled for, or why it is missing."""
    return torch.ops.neva_cuda.build_info() if LOAD_ERROR is None else f"not built: {LOAD_ERROR}"


def probe_arch(device: torch.device | str = "cuda") -> tuple[int, bool]:
    """Run a kernel of the extension on `device`; returns (__CUDA_ARCH__ of the cubin that ran, is it arch-specific
    e.g. sm_90a). Proves the extension is compiled, linked, registered, loaded and runnable on this GPU."""
    if LOAD_ERROR is not None:
        raise backends.BackendUnavailableError(LOAD_ERROR)
    out = torch.zeros(2, dtype=torch.int32, device=device)
    torch.ops.neva_cuda.probe_arch(out)
    arch, specific = out.tolist()
    return arch, bool(specific)
