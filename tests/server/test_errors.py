"""Bad requests: each gets its HTTP status and an OpenAI-shaped error, and the server keeps serving."""
import base64
import io
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from PIL import Image

from tests.server.serving import MODEL_NAME, image_url, post, question, running_server, wait_until


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _with_image(url: str) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What color is the circle?"}, {"type": "image_url", "image_url": {"url": url}}]}]}


def _body(**fields) -> dict:
    return {"model": MODEL_NAME, "messages": question("How many shapes are there?", "scene-1.png"), **fields}


BAD = {  # name: (body, status, param, code)
    "malformed JSON": (b'{"model": "neva-shapes", "messages": [', 400, None, None),
    "not an object": (b"[1, 2]", 400, None, None),
    "temperature of a wrong type": (_body(temperature="hot"), 400, "temperature", None),
    "temperature out of range": (_body(temperature=3.5), 400, "temperature", None),
    "max_tokens of a wrong type": (_body(max_tokens=2.5), 400, "max_tokens", None),
    "unknown field": (_body(temprature=0.5), 400, "temprature", None),
    "n of 2": (_body(n=2), 400, "n", None),
    "a content part of an unknown type": (_body(messages=[{"role": "user", "content": [{"type": "video"}]}]), 400,
                                          "messages[0].content[0]", None),
    "an image URL of a wrong type": (_with_image(5), 400, "messages[0].content[1].image_url.url", None),
    "no messages": (_body(messages=[]), 400, "messages", None),
    "a wrong role order": (_body(messages=[{"role": "assistant", "content": "hi"}]), 400, "messages[0].role", None),
    "too many stop strings": (_body(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    "a SteerLM attribute out of range": (_body(quality=12), 400, "quality", None),
    "a bad SteerLM string": (_body(steerlm="quality=9"), 400, "steerlm", None),
    "undecodable image": (_with_image("data:image/png;base64," + base64.b64encode(b"%!PS-Adobe").decode()), 400,
                          "messages[0].content[1].image_url", None),
    "invalid base64": (_with_image("data:image/png;base64,@@@@"), 400, "messages[0].content[1].image_url", None),
    "an image type not served": (_with_image("data:image/svg+xml;base64,PHN2Zy8+"), 400,
                                 "messages[0].content[1].image_url", None),
    "an image of too many pixels": (_with_image(_png(4097, 4097)), 400, "messages[0].content[1].image_url",
                                    "image_too_large"),
    "a remote image": (_with_image("https://example.com/cat.png"), 400, "messages[0].content[1].image_url",
                       "remote_image_refused"),
    "a prompt past the context": (_body(messages=question("shape " * 600)), 400, "messages",
                                  "context_length_exceeded"),
    "max_tokens past the context": (_body(max_tokens=100_000), 400, "messages", "context_length_exceeded"),
    "an unknown model": (_body(model="gpt-4o"), 404, "model", "model_not_found"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_request_gets_its_status_and_an_openai_error_and_the_server_keeps_serving(server, client, name):
    body, status, param, code = BAD[name]
    got, answer = post(server[0], "/v1/chat/completions", body)
    assert got == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["message"] and answer["error"]["param"] == param and answer["error"]["code"] == code
    ok = client.chat.completions.create(model=MODEL_NAME, messages=question("What color is the square?",
                                                                            "scene-2.png"))
    assert ok.choices[0].message.content == "red"


def test_the_openai_client_raises_its_typed_errors(client):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=MODEL_NAME, messages=question("x " * 600))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=question("x"))


def test_unknown_routes_and_methods_answer_in_the_same_shape(server):
    status, answer = post(server[0], "/v1/completions", {})
    assert status == 404 and answer["error"]["code"] == "404"
    status, answer = post(server[0], "/v1/models", {})
    assert status == 405 and answer["error"]["message"]


def test_a_full_queue_refuses_with_429_and_the_server_recovers(shipped):
    with running_server(shipped, max_batch_size=1, max_waiting=1) as (base, engine):
        long = _body(max_tokens=120, ignore_eos=True)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: post(base, "/v1/chat/completions", long), range(4)))
        statuses = sorted(status for status, _ in results)
        assert set(statuses) == {200, 429}, statuses  # how many fit depends on when the engine thread sees them
        refused = next(answer for status, answer in results if status == 429)
        assert refused["error"]["code"] == "queue_full" and refused["error"]["type"] == "rate_limit_error"
        assert wait_until(lambda: engine.allocator.num_free_blocks == engine.allocator.num_blocks)
        status, answer = post(base, "/v1/chat/completions", _with_image(image_url("scene-1.png")))
        assert status == 200 and answer["choices"][0]["message"]["content"] == "yellow"
