"""The paged generation engine: exact under batching and admission, streaming, stop rules, freed blocks."""
import pytest
import torch

from neva_kernels import NevaValueError, OutOfBlocksError
from neva_model import Engine, Request, SamplingParams, load_neva

from tests.model.tiny_llava import IMAGE_SIZE, random_prompt

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_neva(tiny_checkpoint[2])


def _requests(case, lengths, generator, images_per_request=1, **sampling):
    requests = []
    for length in lengths:
        ids = []
        for _ in range(max(images_per_request, 1)):
            ids += random_prompt(case, length, image_at=length // 2, generator=generator)
        if images_per_request == 0:
            ids = [t for t in ids if t != case.image_token_index]
        count = images_per_request
        images = torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) if count else None
        requests.append(Request(ids, images, SamplingParams(**sampling)))
    return requests


def _hf_greedy(hf, request, max_new_tokens):
    images = {} if request.images is None else {"pixel_values": request.images}  # transformers 5 rejects None
    return hf.generate(input_ids=torch.tensor([request.input_ids]), **images, max_new_tokens=max_new_tokens,
                       do_sample=False)[0, len(request.input_ids):].tolist()


def test_batched_generation_equals_each_request_alone_and_transformers(tiny_checkpoint, model):
    case, hf, _ = tiny_checkpoint
    generator = torch.Generator().manual_seed(3)
    requests = (_requests(case, [5, 1, 13], generator, max_new_tokens=9)
                + _requests(case, [4], generator, images_per_request=0, max_new_tokens=6)
                + _requests(case, [2], generator, images_per_request=2, max_new_tokens=12))
    engine = Engine(model, max_batch_size=3, max_seq_len=48, block_size=3, value_checks=True)  # 5 requests, 3 slots
    together = engine.generate(requests)
    for request, completion in zip(requests, together):
        alone = Engine(model, max_batch_size=1, max_seq_len=48, block_size=5).generate([request])[0]
        assert completion.token_ids == alone.token_ids == _hf_greedy(hf, request, request.sampling.max_new_tokens)
        assert len(completion.token_ids) == request.sampling.max_new_tokens
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    assert not any(engine.slots)


def test_a_small_cache_serializes_requests_instead_of_failing(tiny_checkpoint, model):
    case, hf, _ = tiny_checkpoint
    requests = _requests(case, [6, 3], torch.Generator().manual_seed(4), max_new_tokens=7)
    need = max(len(r.input_ids) for r in requests) + 7
    engine = Engine(model, max_batch_size=2, max_seq_len=need, block_size=4, num_blocks=-(-need // 4))
    completions = engine.generate(requests)
    assert [c.token_ids for c in completions] == [_hf_greedy(hf, r, 7) for r in requests]
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_streaming_and_blocks_freed_as_soon_as_a_sequence_finishes(tiny_checkpoint, model):
    case, _, _ = tiny_checkpoint
    short, long = _requests(case, [3, 3], torch.Generator().manual_seed(5), max_new_tokens=2)
    long.sampling = SamplingParams(max_new_tokens=8)
    engine = Engine(model, max_batch_size=2, max_seq_len=32, block_size=4)
    streamed, free_after_short, short_id = {0: [], 1: []}, [], []

    def on_output(index, output):
        streamed[index].append(output.token_id)
        if index == 0 and output.completion is not None:
            short_id.append(output.request_id)
        if index == 1 and len(streamed[1]) == 4:  # two steps after the short request finished
            free_after_short.append((short_id[0] in engine.allocator, engine.allocator.num_free_blocks))

    completions = engine.generate([short, long], on_output)
    assert streamed == {0: completions[0].token_ids, 1: completions[1].token_ids}
    long_blocks = engine.allocator.blocks_for(len(long.input_ids) + 4)
    assert free_after_short == [(False, engine.allocator.num_blocks - long_blocks)]


def test_eos_and_stop_strings_end_a_sequence(tiny_checkpoint, model):
    case, _, _ = tiny_checkpoint
    request = _requests(case, [4], torch.Generator().manual_seed(6), max_new_tokens=12)[0]
    greedy = Engine(model, max_seq_len=32).generate([request])[0].token_ids
    k = max(i for i, t in enumerate(greedy[:8]) if t not in greedy[:i])  # a token's first appearance
    eos = Engine(model, max_seq_len=32, eos_token_ids=(greedy[k],)).generate([request])[0]
    assert (eos.token_ids, eos.finish_reason) == (greedy[:k], "eos")

    detokenize = (lambda ids: "".join(f"<{t}>" for t in ids))
    request.sampling = SamplingParams(max_new_tokens=12, stop=(f"<{greedy[k]}>", "never"))
    stopped = Engine(model, max_seq_len=32, detokenize=detokenize).generate([request])[0]
    assert (stopped.text, stopped.finish_reason) == (detokenize(greedy[:k]), "stop")
    assert stopped.token_ids == greedy[:k + 1]


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(tiny_checkpoint, model):
    case, _, _ = tiny_checkpoint
    generator = torch.Generator().manual_seed(7)
    sampled = _requests(case, [5], generator, max_new_tokens=10, temperature=1.5, top_k=40, top_p=0.95, seed=11)[0]
    others = _requests(case, [2, 9], generator, max_new_tokens=6, temperature=1.0, seed=5)
    alone = Engine(model, max_seq_len=32).generate([sampled])[0].token_ids
    in_batch = Engine(model, max_batch_size=3, max_seq_len=32).generate([others[0], sampled, others[1]])[1].token_ids
    assert alone == in_batch
    sampled.sampling = SamplingParams(max_new_tokens=10, temperature=1.5, top_k=40, top_p=0.95, seed=12)
    assert Engine(model, max_seq_len=32).generate([sampled])[0].token_ids != alone


def test_bad_requests_are_refused_before_any_work(tiny_checkpoint, model):
    case, _, _ = tiny_checkpoint
    request = _requests(case, [4], torch.Generator().manual_seed(8), max_new_tokens=20)[0]
    with pytest.raises(NevaValueError, match="prompt \\+ max_new_tokens"):
        Engine(model, max_seq_len=16).generate([request])
    request.sampling = SamplingParams(stop=("x",))
    with pytest.raises(NevaValueError, match="detokenizer"):
        Engine(model, max_seq_len=200).generate([request])
    request.sampling = SamplingParams()
    request.images = torch.cat([request.images] * 2)
    with pytest.raises(NevaValueError, match="image tokens for 2 image"):
        Engine(model, max_seq_len=200).generate([request])
    request.images = torch.randn(1, 3, IMAGE_SIZE + 4, IMAGE_SIZE + 4)
    with pytest.raises(NevaValueError, match=rf"Engine: 'request.images' must have shape \[images, 3, {IMAGE_SIZE}, "
                                             rf"{IMAGE_SIZE}\] \(the model's image_size is {IMAGE_SIZE}\), got "
                                             rf"\[1, 3, {IMAGE_SIZE + 4}, {IMAGE_SIZE + 4}\]"):
        Engine(model, max_seq_len=200).generate([request])
    with pytest.raises(NevaValueError, match="max_position_embeddings"):
        Engine(model, max_seq_len=10**6)
    with pytest.raises(NevaValueError, match="cuda_graph needs the model on a CUDA device"):
        Engine(model, cuda_graph=True)
    assert Engine(model).max_seq_len == model.config.text.max_position_embeddings  # 256 < the default 2048


def test_a_request_that_can_never_be_admitted_raises_instead_of_waiting_forever(tiny_checkpoint, model):
    case, _, _ = tiny_checkpoint
    request = _requests(case, [4], torch.Generator().manual_seed(9), max_new_tokens=4)[0]
    engine = Engine(model, max_batch_size=1, max_seq_len=16, block_size=4)
    engine.allocator.allocate("held elsewhere", 4 * (engine.allocator.num_blocks - 1))
    with pytest.raises(OutOfBlocksError, match="1 free blocks cannot hold a request of 12 tokens"):
        engine.generate([request])
