"""Test set-up shared by every test: the Triton interpreter on CPU machines, the gpu marker, fresh seeds."""
import os
import zlib

import numpy
import pytest
import torch

# Triton reads TRITON_INTERPRET when its kernels are decorated, i.e. when neva_kernels is imported: set it first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import triton  # noqa: E402  (after TRITON_INTERPRET is set)


# Triton's interpreter before 3.8 turns a one-element array into an index with int(), which numpy 2.5 refuses (seen
# with triton 3.6 in the GPU machine's image). A test that meets exactly that error there is reported as skipped with
# the reason: the kernel is not at fault, and the same test runs on every other triton/numpy pair.
INTERPRETER_INDEX_ERROR = "only 0-dimensional arrays can be converted to Python scalars"


def _version(text: str) -> tuple[int, int]:
    return tuple(int(part) for part in text.split(".")[:2])


INTERPRETER_INDEX_BUG = (os.environ.get("TRITON_INTERPRET") == "1" and _version(triton.__version__) < (3, 8)
                         and _version(numpy.__version__) >= (2, 5))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if INTERPRETER_INDEX_BUG and report.failed and call.excinfo and INTERPRETER_INDEX_ERROR in str(call.excinfo.value):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f"Skipped: triton {triton.__version__}'s interpreter calls int() on an array, which numpy "
                           f"{numpy.__version__} refuses")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """In a pytest-xdist worker on a GPU: a CUDA error that poisons the context (a kernel that trapped or faulted)
    ends the worker after its test is reported, and xdist starts a fresh one, instead of failing every later test of
    this worker. xdist also reports that test as having crashed the worker."""
    yield
    if os.environ.get("PYTEST_XDIST_WORKER") and torch.cuda.is_initialized():
        try:
            torch.cuda.synchronize()
        except RuntimeError:  # torch.AcceleratorError too
            os._exit(3)


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
