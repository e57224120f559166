"""Fixtures of the transformers integration tests: the neva backend every op is forced to, one thread."""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends


@pytest.fixture(params=["torch", "triton"])
def cpu_backend(request):
    """Every neva op on the torch reference, or on the Triton kernels in the CPU interpreter (float32)."""
    if request.param == "triton" and not backends._triton_interpreter:
        pytest.skip("the Triton interpreter is off (a GPU is present): the gpu tests run the Triton kernels")
    nk.set_backend(request.param)
    yield request.param
    nk.set_backend(None)


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: tiny matmuls on a shared 2-core machine run far slower when threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
