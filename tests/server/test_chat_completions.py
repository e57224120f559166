"""POST /v1/chat/completions through the real openai client: right answers, streaming, concurrency, aborts."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.serving import EXAMPLES, MODEL_NAME, question, wait_until

QUESTIONS = [(picture, qa["question"], qa["answer"])
             for picture, qas in json.loads((EXAMPLES / "questions.json").read_text()).items() for qa in qas]


def _ask(client, messages, **options):
    return client.chat.completions.create(model=MODEL_NAME, messages=messages, **options)


def _streamed(client, messages, **options) -> tuple[str, str, object]:
    """(text, finish reason, usage) of a streamed answer, from its chunks."""
    text, finish, usage = [], None, None
    for chunk in _ask(client, messages, stream=True, stream_options={"include_usage": True}, **options):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


def _all_blocks_free(engine) -> bool:
    return not engine.has_unfinished() and engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_a_question_with_an_image_gets_the_right_answer(client):
    for picture in ("scene-1.png", "scene-3.png"):
        for _, text, answer in [q for q in QUESTIONS if q[0] == picture]:
            response = _ask(client, question(text, picture))
            assert response.choices[0].message.content == answer, text
            assert response.choices[0].finish_reason == "stop" and response.choices[0].message.role == "assistant"
            assert response.usage.prompt_tokens > 16 and response.usage.completion_tokens >= 2  # answer + EOS
            assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


@pytest.mark.parametrize("options", [{}, {"stop": ["purple c"]}, {"max_tokens": 3},
                                     {"temperature": 1.3, "top_p": 0.9, "seed": 5, "top_k": 5}],
                         ids=["greedy", "stop", "length", "seeded-sampling"])
def test_streaming_gives_the_text_of_the_whole_answer(client, options):
    extra = {"extra_body": {"top_k": options.pop("top_k")}} if "top_k" in options else {}
    messages = question("Describe the image.", "scene-3.png")
    whole = _ask(client, messages, **options, **extra)
    text, finish, usage = _streamed(client, messages, **options, **extra)
    assert (text, finish) == (whole.choices[0].message.content, whole.choices[0].finish_reason)
    assert usage.completion_tokens == whole.usage.completion_tokens
    if "stop" in options:
        assert text == "a yellow triangle, a " and finish == "stop"


def test_32_concurrent_requests_answer_as_one_by_one_and_free_every_block(client, server):
    requests = [dict(messages=question(text, picture)) for picture, text, _ in QUESTIONS]
    requests += [dict(messages=question("Describe the image.", f"scene-{i}.png"), max_tokens=1 + i) for i in range(1, 4)]
    requests += [dict(messages=question("How many shapes are there?")),  # no image
                 dict(messages=question("Describe the image.", "scene-4.png"), stop=[","])]
    assert len(requests) == 32
    one_by_one = [_ask(client, **r).choices[0].message.content for r in requests]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda r: _ask(client, **r).choices[0].message.content, requests))
    assert together == one_by_one
    assert one_by_one[:len(QUESTIONS)] == [answer for _, _, answer in QUESTIONS]
    assert wait_until(lambda: _all_blocks_free(server[1]))


def test_a_client_that_leaves_mid_stream_aborts_its_request_and_frees_its_blocks(client, server):
    engine, max_tokens = server[1], 400
    decoded_before = engine.timings.decode_tokens
    stream = _ask(client, question("Describe the image.", "scene-2.png"), stream=True, max_tokens=max_tokens,
                  extra_body={"ignore_eos": True})
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    assert engine.num_running == 1 and engine.allocator.num_free_blocks < engine.allocator.num_blocks
    stream.close()
    assert wait_until(lambda: _all_blocks_free(server[1]), 10)
    assert engine.timings.decode_tokens - decoded_before < max_tokens - 1  # it was stopped, not run to the end
    assert _ask(client, question("What color is the square?", "scene-2.png")).choices[0].message.content == "red"


def test_a_conversation_of_several_turns_with_steerlm_attributes_is_answered(client):
    messages = [{"role": "system", "content": "Answer briefly."},
                *question("What color is the circle?", "scene-1.png"),
                {"role": "assistant", "content": "yellow"},
                {"role": "user", "content": "How many shapes are there?"}]
    response = _ask(client, messages, max_tokens=8, extra_body={"quality": 9, "humor": 0})
    assert response.choices[0].message.content and response.choices[0].finish_reason in ("stop", "length")
