"""The engine's step-wise API: requests joining a running batch, aborts at any step, the bounded queue, checks."""
import re

import pytest
import torch

from neva_kernels import NevaTypeError, NevaValueError
from neva_model import Engine, QueueFullError, Request, SamplingParams, load_neva

from tests.model.tiny_llava import IMAGE_SIZE, random_prompt

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_neva(tiny_checkpoint[2])


@pytest.fixture(scope="module")
def requests(tiny_checkpoint):
    """Five requests of different prompt and answer lengths, one of them without an image."""
    case, generator = tiny_checkpoint[0], torch.Generator().manual_seed(21)
    made = []
    for length, answer, image in [(5, 9, True), (2, 6, True), (11, 7, False), (3, 10, True), (7, 4, True)]:
        ids = random_prompt(case, length, image_at=length // 2, generator=generator)
        pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        if not image:
            ids, pixels = [t for t in ids if t != case.image_token_index], None
        made.append(Request(ids, pixels, SamplingParams(max_new_tokens=answer)))
    return made


@pytest.fixture(scope="module")
def alone(model, requests):
    return [Engine(model, max_batch_size=1, max_seq_len=48).generate([r])[0].token_ids for r in requests]


def _engine(model, **options):
    return Engine(model, **{"max_batch_size": 3, "max_seq_len": 48, "block_size": 4, **options})


def _run(engine, schedule: dict[int, list[Request]]) -> dict[int, list[int]]:
    """Step the engine, adding schedule[k] before step k; the streamed tokens of each request id."""
    streamed, ids, step = {}, {}, 0
    while step <= max(schedule) or engine.has_unfinished():
        for request in schedule.get(step, []):
            ids[engine.add_request(request)] = request
        for output in engine.step():
            if output.token_id is not None:
                streamed.setdefault(output.request_id, []).append(output.token_id)
            if output.completion is not None:
                assert output.completion.token_ids == streamed.get(output.request_id, [])
        step += 1
    return streamed


def _blocks_consistent(engine) -> None:
    """Every block is either free or held by exactly one running sequence, and only running ones hold blocks."""
    allocator = engine.allocator
    running = [s.seq_id for s in engine.slots if s is not None and s.seq_id in allocator]
    held = [b for seq_id in running for b in allocator.blocks(seq_id)]
    assert len(held) == len(set(held)) and len(held) + allocator.num_free_blocks == allocator.num_blocks


@pytest.mark.parametrize("schedule", [{0: [0], 2: [1], 3: [2, 3], 9: [4]}, {0: [4, 3, 2, 1, 0]}, {0: [2], 1: [0],
                                      5: [3, 1], 6: [4]}], ids=["staggered", "reversed-at-once", "late-joiners"])
def test_requests_joining_mid_decode_give_the_tokens_they_give_alone(model, requests, alone, schedule):
    engine = _engine(model)
    order = [i for step in sorted(schedule) for i in schedule[step]]
    streamed = _run(engine, {step: [requests[i] for i in batch] for step, batch in schedule.items()})
    assert [streamed[request_id] for request_id in range(len(order))] == [alone[i] for i in order]
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks and not engine.has_unfinished()


@pytest.mark.parametrize("victim", [0, 3])  # 3 waits for a slot at first (3 slots for 4 requests)
@pytest.mark.parametrize("at_step", range(0, 11, 2))
def test_abort_at_any_step_frees_the_blocks_and_leaves_the_others_exact(model, requests, alone, victim, at_step):
    engine = _engine(model)
    ids = [engine.add_request(r) for r in requests[:4]]
    streamed = {i: [] for i in ids}
    for step in range(40):
        if step == at_step:
            was_live = ids[victim] in engine._live
            assert engine.abort(ids[victim]) == was_live
            assert ids[victim] not in engine.allocator and not engine.abort(ids[victim])
            _blocks_consistent(engine)
        if not engine.has_unfinished():
            break
        for output in engine.step():
            if output.token_id is not None:
                streamed[output.request_id].append(output.token_id)
            _blocks_consistent(engine)
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    for i, request_id in enumerate(ids):
        expected = alone[i]
        if i == victim:  # what it streamed before the abort is the start of its answer alone
            expected = alone[i][:len(streamed[request_id])]
        assert streamed[request_id] == expected
    engine.add_request(requests[victim])  # the engine keeps serving
    assert _run(engine, {0: []}) == {ids[-1] + 1: alone[victim]}


def test_the_waiting_queue_is_bounded(model, requests):
    engine = _engine(model, max_batch_size=1, max_waiting=2)
    engine.add_request(requests[0])
    engine.add_request(requests[1])
    with pytest.raises(QueueFullError, match="2 requests are waiting"):
        engine.add_request(requests[2])
    assert engine.num_waiting == 2
    engine.step()  # one request takes the slot: room in the queue again
    assert (engine.num_running, engine.num_waiting) == (1, 1)
    engine.add_request(requests[2])
    # generate() feeds its requests as the queue makes room, so a long list works with a short queue
    assert [c.token_ids for c in engine.generate(requests)] == \
        [Engine(model, max_batch_size=1, max_seq_len=48).generate([r])[0].token_ids for r in requests]


def test_streamed_text_is_the_answer_and_never_shows_a_stop_string(model, requests, alone):
    detokenize = (lambda ids: "".join(f"<{t}>" for t in ids))
    stop = f"<{alone[0][3]}>"
    request = Request(requests[0].input_ids, requests[0].images, SamplingParams(max_new_tokens=9, stop=(stop,)))
    engine = _engine(model, detokenize=detokenize)
    pieces = []
    [completion] = engine.generate([request], lambda _, output: pieces.append(output.text))
    assert "".join(pieces) == completion.text == detokenize(alone[0][:alone[0].index(alone[0][3])])
    assert completion.finish_reason == "stop"


@pytest.mark.parametrize("options, error, message", [
    (dict(num_blocks=0), NevaValueError, "Engine: 'num_blocks' must be >= 1, got 0"),
    (dict(num_blocks="8"), NevaTypeError, "Engine: 'num_blocks' must be an int, got str '8'"),
    (dict(max_batch_size=0), NevaValueError, "Engine: 'max_batch_size' must be >= 1, got 0"),
    (dict(block_size=2.5), NevaTypeError, "Engine: 'block_size' must be an int, got float 2.5"),
    (dict(max_waiting=True), NevaTypeError, "Engine: 'max_waiting' must be an int, got bool True"),
    (dict(max_seq_len=0), NevaValueError, "Engine: 'max_seq_len' must be >= 1, got 0"),
])
def test_engine_arguments_are_checked(model, options, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        Engine(model, **options)
    with pytest.raises(NevaTypeError, match="detokenize must be callable"):
        Engine(model, detokenize="words")
    with pytest.raises(NevaTypeError, match="eos_token_ids must be ints"):
        Engine(model, eos_token_ids=("2",))


@pytest.mark.parametrize("bad", [-1, 96, 10**9])
def test_token_ids_outside_the_vocabulary_are_refused(model, requests, bad):
    engine = _engine(model)
    ids = list(requests[2].input_ids)
    ids[1] = bad
    with pytest.raises(NevaValueError, match=f"token ids must be in \\[0, 96\\) or the image token 95, got {bad}"):
        engine.add_request(Request(ids, sampling=SamplingParams(max_new_tokens=4)))
    with pytest.raises(NevaTypeError, match="must be a list of ints"):
        engine.add_request(Request([1, 2.0]))
    assert engine.num_waiting == 0 and not engine.has_unfinished()
