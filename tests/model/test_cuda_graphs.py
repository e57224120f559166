"""Decode steps from CUDA graphs: one per batch-size bucket, each replaying exactly what the eager step computes."""
import pytest
import torch

from neva_kernels import NevaValueError
from neva_model import Engine, Request, SamplingParams, load_neva
from neva_model.cuda_graphs import batch_size_buckets

from tests.model.tiny_llava import IMAGE_SIZE, PARITY_CASES, build_hf_model, random_prompt


def test_buckets_are_powers_of_two_then_multiples_of_eight_up_to_the_batch_size():
    assert batch_size_buckets(1) == (1,)
    assert batch_size_buckets(3) == (1, 2, 3)
    assert batch_size_buckets(8) == (1, 2, 4, 8)
    assert batch_size_buckets(20) == (1, 2, 4, 8, 16, 20)


def test_graphs_are_refused_off_cuda_and_off_by_default_there(tiny_checkpoint):
    model = load_neva(tiny_checkpoint[2])
    with pytest.raises(NevaValueError, match="cuda_graph needs the model on a CUDA device, it is on cpu"):
        Engine(model, cuda_graph=True)
    assert Engine(model).step_runner is None


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("graphs")
    build_hf_model(PARITY_CASES[0]).save_pretrained(directory)
    return load_neva(directory, dtype=torch.float32, device="cuda")


def _fill_step(engine: Engine, lengths: list[int], generator: torch.Generator) -> None:
    """Step tensors of sequences of `lengths` (one per slot from 0; the other slots idle), their caches random."""
    engine.cache.k.normal_()
    engine.cache.v.normal_()
    slots = len(engine.slots)
    tables = torch.zeros(engine.step_block_tables.shape, dtype=torch.int32)
    step_slots, seq_lens = [-1] * slots, [0] * slots
    for i, n in enumerate(lengths):
        engine.allocator.allocate(i, n)
        blocks = engine.allocator.blocks(i)
        tables[i, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        step_slots[i], seq_lens[i] = engine.allocator.slots(i, n - 1)[0], n
    vocab = engine.model.config.text.vocab_size
    engine.step_tokens.copy_(torch.randint(0, vocab - 1, (slots,), generator=generator))
    engine.step_positions.copy_(torch.tensor([max(n - 1, 0) for n in seq_lens]))
    engine.step_slots.copy_(torch.tensor(step_slots))
    engine.step_block_tables.copy_(tables)
    engine.step_seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("active,bucket", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8)])
def test_every_bucket_replays_exactly_the_eager_step(gpu_model, active, bucket):
    """`active` sequences in the first slots: the bucket's graph gives the eager step's logits, bit for bit."""
    engine = Engine(gpu_model, max_batch_size=8, max_seq_len=64, block_size=4)
    assert engine.step_runner is not None and engine.step_runner.buckets == (1, 2, 4, 8)  # on by default on CUDA
    generator = torch.Generator().manual_seed(active)
    _fill_step(engine, [int(n) for n in torch.randint(1, 60, (active,), generator=generator)], generator)
    assert engine.step_runner.bucket(active) == bucket
    with torch.inference_mode():
        eager = engine.decode_forward(bucket).clone()
        k_cache = engine.cache.k.clone()
        for _ in range(2):  # the first run captures, the second replays the captured graph
            replayed = engine.step_runner.run(active).clone()
            torch.cuda.synchronize()
            assert torch.equal(replayed, eager)
            assert torch.equal(engine.cache.k, k_cache)  # the step's K/V written once more, to the same slots
        padded = engine.decode_forward(active)  # the bucket's idle rows change nothing in the active ones
    torch.testing.assert_close(replayed[:active], padded, rtol=1e-5, atol=1e-5)
    assert list(engine.step_runner.captured) == [bucket]


@pytest.mark.gpu
def test_requests_joining_and_leaving_between_replays_get_the_eager_tokens(gpu_model):
    """More requests than slots, answers of different lengths: slots empty and refill between replays, the
    batch moves between buckets, and every answer is the eager engine's, token for token."""
    case = PARITY_CASES[0]
    generator = torch.Generator().manual_seed(2)
    requests = [Request(random_prompt(case, n, image_at=1, generator=generator),
                        torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                        SamplingParams(max_new_tokens=new, ignore_eos=True))
                for n, new in ((2, 3), (7, 12), (5, 6), (3, 9), (9, 4), (4, 10), (6, 2))]
    sampled = Request(requests[0].input_ids, requests[0].images,
                      SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5))
    requests.append(sampled)
    runs = {}
    for graph in (False, True):
        engine = Engine(gpu_model, max_batch_size=4, max_seq_len=64, block_size=4, cuda_graph=graph)
        runs[graph] = [c.token_ids for c in engine.generate(requests)]
        assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    assert runs[True] == runs[False]
    assert [len(t) for t in runs[True]] == [r.sampling.max_new_tokens for r in requests]
    assert len(engine.step_runner.captured) > 1  # the batch shrank and grew across buckets
