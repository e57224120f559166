"""Test set-up shared by every test: the Triton interpreter on CPU machines, the gpu marker, fresh seeds."""
import os
import zlib

import pytest
import torch

# Triton reads TRITON_INTERPRET when its kernels are decorated, i.e. when neva_kernels is imported: set it first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """A different, reproducible seed for every test case (derived from its id)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def poisoned_outputs():
    """Fill every newly allocated tensor with NaN (ints with their max), so an element a kernel forgets to
    write shows up instead of passing by luck."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)
