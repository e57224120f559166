"""Fixtures of the model tests: tiny random llava-hf checkpoints written by transformers."""
import pytest
import torch

from tests.model.tiny_llava import PARITY_CASES, write_checkpoint


@pytest.fixture(scope="module", params=PARITY_CASES, ids=lambda c: c.name)
def checkpoint(request, tmp_path_factory):
    """(case, transformers model, checkpoint directory) for each parity configuration."""
    case = request.param
    directory = tmp_path_factory.mktemp(case.name)
    return case, write_checkpoint(case, directory), directory


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """(case, transformers model, directory) of the first parity configuration, for the engine and CLI tests."""
    case = PARITY_CASES[0]
    directory = tmp_path_factory.mktemp("tiny")
    return case, write_checkpoint(case, directory), directory


@pytest.fixture
def single_thread():
    """One torch thread: tiny matmuls on a shared 2-core machine run far slower when threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
