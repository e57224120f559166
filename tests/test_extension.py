"""The compiled extension neva_kernels._C: built for sm_80 and sm_90a, loaded, its ops registered and runnable."""
import os
import re
import shutil
import subprocess

import pytest
import torch
import triton

import neva_kernels as nk
from neva_kernels import cuda_archs, cuda_backend

# `make test` sets this where nvcc and a CUDA build of torch are present: there a missing extension is a failure.
REQUIRED = os.environ.get("NEVA_REQUIRE_CUDA_EXTENSION") == "1"
# The CUDA toolkit's cuobjdump where one is on PATH (the GPU machine's), else the one triton ships. Triton's before 3.8
# names sm_90a cubins "sm_90" (seen with triton 3.6), so tests that read architecture names skip with it.
TRITON_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
CUOBJDUMP = shutil.which("cuobjdump") or TRITON_CUOBJDUMP
names_architectures = pytest.mark.skipif(
    CUOBJDUMP == TRITON_CUOBJDUMP and tuple(map(int, triton.__version__.split(".")[:2])) < (3, 8),
    reason=f"triton {triton.__version__}'s cuobjdump names sm_90a cubins sm_90; no CUDA toolkit cuobjdump is on PATH")

needs_extension = pytest.mark.skipif(cuda_backend.LOAD_ERROR is not None and not REQUIRED,
                                     reason=f"extension not built here: {cuda_backend.LOAD_ERROR}")


@needs_extension
def test_extension_loads():
    assert cuda_backend.LOAD_ERROR is None, cuda_backend.LOAD_ERROR
    assert "cuda" not in nk.backends._backend_missing


@needs_extension
def test_registered_schemas():
    schemas = {name: str(getattr(torch.ops.neva_cuda, name).default._schema) for name in ("probe_arch", "build_info")}
    assert schemas == {"probe_arch": "neva_cuda::probe_arch(Tensor(a!) out) -> ()",
                       "build_info": "neva_cuda::build_info() -> str"}


@needs_extension
@names_architectures
def test_compiled_for_the_requested_architectures():
    expected = set(cuda_archs.arch_names(cuda_archs.requested()))
    listing = subprocess.run([CUOBJDUMP, "--list-elf", nk._C.__file__], capture_output=True, text=True,
                             check=True).stdout
    cubin_archs = set(re.findall(r"\.(sm_\w+)\.cubin", listing))
    assert cubin_archs == expected, listing
    assert all(arch in cuda_backend.build_info() for arch in expected)


@needs_extension
def test_probe_on_cpu_tensor_is_refused():
    with pytest.raises(NotImplementedError):
        torch.ops.neva_cuda.probe_arch(torch.zeros(2, dtype=torch.int32))


@pytest.mark.gpu
@needs_extension
def test_probe_reports_the_cubin_that_runs():
    major, minor = torch.cuda.get_device_capability()
    arch, arch_specific = cuda_backend.probe_arch("cuda")
    assert arch == major * 100 + minor * 10
    assert arch_specific == (major == 9 and "sm_90a" in cuda_backend.build_info())
