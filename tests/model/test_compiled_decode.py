"""Decode steps compiled by torch.compile (Engine(compile_decode=True)) on CPU: the eager engine's answers."""
import pytest
import torch

from neva_kernels import NevaValueError
from neva_model import Engine, Request, SamplingParams, load_neva

from tests.model.tiny_llava import IMAGE_SIZE, PARITY_CASES, build_hf_model, random_prompt


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compiled")
    build_hf_model(PARITY_CASES[0]).save_pretrained(directory)
    return load_neva(directory, dtype=torch.float32)


def test_compile_and_cuda_graphs_exclude_each_other(model):
    with pytest.raises(NevaValueError, match="compile_decode and cuda_graph exclude each other"):
        Engine(model, compile_decode=True, cuda_graph=True)
    assert Engine(model, compile_decode=True).step_runner.buckets == (1, 2, 4, 8)


@pytest.mark.slow
def test_requests_joining_and_leaving_get_the_eager_tokens(model):
    """More requests than slots, answers of different lengths: slots empty and refill, the batch moves between
    buckets (each compiled once), padding rows write nothing, and every answer is the eager engine's."""
    generator = torch.Generator().manual_seed(3)
    requests = [Request(random_prompt(PARITY_CASES[0], n, image_at=1, generator=generator),
                        torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                        SamplingParams(max_new_tokens=new, ignore_eos=True))
                for n, new in ((2, 3), (7, 9), (5, 6), (9, 4), (4, 7))]
    requests.append(Request(requests[0].input_ids, requests[0].images,
                            SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=5)))
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        engine = Engine(model, max_batch_size=4, max_seq_len=32, block_size=4, compile_decode=compiled)
        runs[compiled] = [c.token_ids for c in engine.generate(requests)]
        assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    assert runs[True] == runs[False]
    assert [len(t) for t in runs[True]] == [r.sampling.max_new_tokens for r in requests]


def test_compile_is_refused_under_tensor_parallelism(model, monkeypatch):
    monkeypatch.setattr(model, "tensor_parallel", object())  # what neva_model.parallel sets on a sharded model
    with pytest.raises(NevaValueError, match="compile_decode is not available with tensor parallelism"):
        Engine(model, compile_decode=True)
