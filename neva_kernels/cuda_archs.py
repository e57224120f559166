"""The GPU architectures the CUDA extension is compiled for: the one default and parser that setup.py (which passes
them to nvcc and, as NEVA_CUDA_ARCHS, to the C++ code) and the tests of the built binary share.

Loaded by setup.py from its path before the package is importable: standard library only."""
import os
import re

DEFAULT = "8.0;9.0a"  # A100's sm_80 and Hopper's sm_90a


def requested() -> str:
    """TORCH_CUDA_ARCH_LIST (torch's build reads it), else DEFAULT."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT)


def arch_names(archs: str) -> list[str]:
    """"8.0;9.0a" (separated by ; or spaces) -> ["sm_80", "sm_90a"], in order."""
    return ["sm_" + a.replace(".", "") for a in re.split(r"[;\s]+", archs) if a]
