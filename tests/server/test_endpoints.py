"""/v1/models, /health, /metrics; remote images when allowed; the conversation a chat request renders;
SIGTERM on a `neva serve` process."""
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from neva_model.prompts import SteerLMAttributes, build_prompt
from neva_model.server.app import free_port
from neva_model.server.chat import Served, engine_request
from neva_model.server.images import ImageLimits
from neva_model.server.protocol import parse_chat_request
from neva_model.tokenizer import model_input_ids

from tests.server.serving import EXAMPLES, MODEL_NAME, post, question, running_server, wait_until


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert _get(server[0] + "/health") == (200, '{"status":"ok"}')
    client.chat.completions.create(model=MODEL_NAME, messages=question("How many shapes are there?", "scene-2.png"))
    status, text = _get(server[0] + "/metrics")
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert status == 200 and values['neva_requests_total{outcome="eos"}'] >= 1
    assert values["neva_completion_tokens_total"] >= 2 and values["neva_prompt_tokens_total"] >= 16
    assert values["neva_requests_waiting"] == 0 and values["neva_time_to_first_token_seconds_count"] >= 1
    assert values['neva_time_to_first_token_seconds_bucket{le="+Inf"}'] == \
        values["neva_time_to_first_token_seconds_count"]


def test_remote_images_are_fetched_only_when_allowed(shipped):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(EXAMPLES))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as files:
        threading.Thread(target=files.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{files.server_address[1]}/scene-1.png"
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What color is the circle?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
        with running_server(shipped, ImageLimits(allow_remote=True), max_batch_size=2) as (base, _):
            status, answer = post(base, "/v1/chat/completions", body)
            assert status == 200 and answer["choices"][0]["message"]["content"] == "yellow"
            status, answer = post(base, "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url[:-5] + "missing.png"}}]}]})
            assert status == 400 and "cannot fetch" in answer["error"]["message"]
        files.shutdown()


def test_a_multi_turn_steerlm_request_renders_the_conversation_neva_ask_would(server, shipped):
    _, tokenizer = shipped
    engine = server[1]
    chat = parse_chat_request(b'''{"model": "m", "quality": 9, "steerlm": "humor:2", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What color is it?"},
                                     {"type": "image_url", "image_url": {"url": "%s"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": "And its shape?"}]}''' % question("x", "scene-2.png")[0]["content"][1][
        "image_url"]["url"].encode())
    request = engine_request(chat, Served(engine, tokenizer, (0.5,) * 3, (0.5,) * 3, ImageLimits()))
    prompt = build_prompt("And its shape?", history=[("<image>\nWhat color is it?", "red")], system="Be brief.",
                          steerlm=SteerLMAttributes.parse("humor:2,quality:9"))
    assert request.input_ids == model_input_ids(tokenizer, prompt, engine.model.config, 1)
    assert request.images.shape[0] == 1 and request.sampling.temperature == 0


def test_sigterm_lets_the_running_stream_finish_then_exits_cleanly(tmp_path):
    port = free_port()
    root = Path(__file__).parents[2]
    environment = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "neva_model.cli", "serve", "--port", str(port),
                                "--max-batch-size", "2", "--shutdown-timeout", "20"], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                return _get(base + "/health")[0] == 200
            except OSError:
                return process.poll() is not None
        assert wait_until(healthy, 120) and process.poll() is None
        body = {"model": "neva-shapes", "stream": True, "max_tokens": 60, "ignore_eos": True,
                "messages": question("Describe the image.", "scene-1.png")}
        request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            first = response.readline()
            process.send_signal(signal.SIGTERM)
            rest = response.read().decode()
        assert first.startswith(b"data: ") and rest.rstrip().endswith("data: [DONE]")
        # uvicorn exits 0, or (since 0.29) re-raises the signal once it has shut down so the status tells why
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(OSError):
            _get(base + "/health")
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert "Waiting for application shutdown" in output and "Application shutdown complete" in output, output
