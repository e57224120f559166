"""Builds neva_kernels._C, the cuda backend, where nvcc and a CUDA build of torch are present.

NEVA_BUILD_CUDA=auto (default) builds it when it can and says why not otherwise; 1 makes a failed check an error;
0 skips it. TORCH_CUDA_ARCH_LIST picks the GPU architectures (default in neva_kernels/cuda_archs.py: sm_80 and
Hopper's sm_90a).
Sources are every .cu and .cpp under csrc/. torch must be importable at build time, so install with
`pip install -e . --no-build-isolation`.
"""
import glob
import os
import runpy
import shutil
import sys

from setuptools import setup

# By path: importing the package would import its backends.
CUDA_ARCHS = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "neva_kernels", "cuda_archs.py"))


def _cuda_home_default() -> None:
    # torch guesses CUDA_HOME from nvcc's path (/usr/local/bin -> /usr/local) and then cannot find libcudart.
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _why_no_cuda_build() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not importable while building (install with --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        return "no CUDA toolkit found (nvcc; set CUDA_HOME)"
    return None


def _wheel_cuda_includes() -> list[str]:
    """Headers that only the nvidia-* wheels ship (e.g. cusparse.h, which ATen/cuda/CUDAContext.h includes)."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include")))


def cuda_extensions() -> tuple[list, dict]:
    mode = os.environ.get("NEVA_BUILD_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"NEVA_BUILD_CUDA must be auto, 0 or 1, got '{mode}'")
    if mode == "0":
        print("neva: NEVA_BUILD_CUDA=0, building without neva_kernels._C")
        return [], {}
    _cuda_home_default()
    reason = _why_no_cuda_build()
    if reason is not None:
        if mode == "1":
            sys.exit(f"neva: NEVA_BUILD_CUDA=1 but neva_kernels._C cannot be built: {reason}")
        print(f"neva: building without neva_kernels._C: {reason}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", CUDA_ARCHS["requested"]())
    arch_tag = "+".join(CUDA_ARCHS["arch_names"](archs))
    sources = sorted(glob.glob("csrc/**/*.cu", recursive=True) + glob.glob("csrc/**/*.cpp", recursive=True))
    extension = CUDAExtension(
        "neva_kernels._C",
        sources,
        include_dirs=[os.path.abspath("csrc")] + _wheel_cuda_includes(),
        define_macros=[("NEVA_CUDA_ARCHS", f'"{arch_tag}"')],
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"],
        },
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
