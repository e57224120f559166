"""Fixtures of the server tests: the shipped model, one server for the module, the real openai client."""
import openai
import pytest

from neva_model import load_neva
from neva_model.cli import DEFAULT_MODEL
from neva_model.tokenizer import load_tokenizer

from tests.server.serving import running_server


@pytest.fixture(scope="session")
def shipped():
    return load_neva(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def server(shipped):
    with running_server(shipped, max_batch_size=8, max_waiting=64) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=60)
