"""`neva serve` under load: N concurrent clients (1, 8, 32, 64) streaming through the real openai client.

Each client sends its requests one after another; every request holds one image and a question and asks for
a fixed number of answer tokens (ignore_eos), so every run does the same work. Measured at the clients, over
the run's wall time: requests/s and output tokens/s, time to first token and inter-token latency (the gaps
between streamed pieces), p50 and p99.

On a GPU: LLaVA-1.5-7B shapes in bf16 with random weights and a word-level stand-in tokenizer (no checkpoint
can be downloaded here). --quick or CPU: the shipped neva-shapes model in float32, short answers.
"""
from __future__ import annotations

import base64
import functools
import io
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from neva_model import Engine, NevaConfig, load_neva
from neva_model.cli import DEFAULT_MODEL
from neva_model.image import CLIP_MEAN, CLIP_STD, checkpoint_image_stats
from neva_model.server.app import serving_in_thread
from neva_model.server.chat import Served
from neva_model.server.images import ImageLimits
from neva_model.tokenizer import NevaTokenizer, load_tokenizer

from .case import Case
from .end_to_end import random_model

CLIENTS = (1, 8, 32, 64)
MODEL_NAME = "neva"


@dataclass(frozen=True)
class Load:
    requests_per_client: int
    question_words: int
    answer_tokens: int
    max_seq_len: int


def _word_tokenizer(config: NevaConfig) -> NevaTokenizer:
    """A stand-in tokenizer for random weights: "wN" is id N, other words hash to an id, specials are fixed."""
    special = {"<s>": 1, "</s>": 2, "<image>": config.image_token_index}
    text_ids = config.image_token_index - 3

    def word_id(word: str) -> int:
        if word in special:
            return special[word]
        return int(word[1:]) if word[:1] == "w" and word[1:].isdigit() else 3 + zlib.crc32(word.encode()) % text_ids

    return NevaTokenizer(lambda text: [word_id(w) for w in text.split()],
                         lambda ids, _skip: " ".join(f"w{i}" for i in ids), special.get, config.text.vocab_size,
                         bos_token="<s>", eos_token="</s>", add_bos_token=True, source="benchmark word tokenizer")


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _setup(device: torch.device, quick: bool):
    """(model, tokenizer, image mean/std, the request's image as a data: URL, its question, the load)."""
    if quick or device.type != "cuda":
        model, tokenizer = load_neva(DEFAULT_MODEL, dtype=torch.float32, device=device), load_tokenizer(DEFAULT_MODEL)
        picture = _png_data_url(Image.open(DEFAULT_MODEL.parent.parent / "examples" / "scene-3.png"))
        return (model, tokenizer, checkpoint_image_stats(DEFAULT_MODEL), picture, "Describe the image.",
                Load(requests_per_client=1, question_words=3, answer_tokens=8, max_seq_len=64))
    config = NevaConfig.from_name("llava-1.5-7b")
    model = random_model(config, device, torch.bfloat16)
    size = config.vision.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    words = 32
    question = " ".join(f"w{i}" for i in np.random.default_rng(1).integers(3, 30000, words))
    return (model, _word_tokenizer(config), (CLIP_MEAN, CLIP_STD), _png_data_url(Image.fromarray(pixels)), question,
            Load(requests_per_client=2, question_words=words, answer_tokens=128, max_seq_len=1024))


def _percentiles(values: list[float], name: str) -> dict[str, float]:
    p50, p99 = np.percentile(values, [50, 99]) if values else (float("nan"), float("nan"))
    return {f"{name}_p50_ms": float(p50) * 1e3, f"{name}_p99_ms": float(p99) * 1e3}


def _stream_one(client, messages: list[dict], load: Load) -> tuple[float, list[float], int]:
    """(time to first token, gaps between streamed pieces, output tokens) of one streamed request."""
    start, arrivals, tokens = time.perf_counter(), [], 0
    for chunk in client.chat.completions.create(model=MODEL_NAME, messages=messages, stream=True,
                                                max_tokens=load.answer_tokens, extra_body={"ignore_eos": True},
                                                stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return arrivals[0] - start, list(np.diff(arrivals)), tokens


def _run_load(setup, clients: int) -> dict:
    import openai  # a dev dependency: the benchmark drives the server as a real client would

    model, tokenizer, (mean, std), picture, question, load = setup
    engine = Engine(model, max_batch_size=max(CLIENTS), max_seq_len=load.max_seq_len, max_waiting=max(CLIENTS),
                    detokenize=tokenizer.decode_generated)
    messages = [{"role": "user", "content": [{"type": "text", "text": question},
                                             {"type": "image_url", "image_url": {"url": picture}}]}]
    with serving_in_thread(Served(engine, tokenizer, mean, std, ImageLimits()), MODEL_NAME) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        _stream_one(client, messages, load)  # warm-up: kernels compiled and tuned outside the measurement
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            runs = list(pool.map(lambda _: [_stream_one(client, messages, load)
                                            for _ in range(load.requests_per_client)], range(clients)))
        wall = time.perf_counter() - start
    done = [request for run in runs for request in run]
    tokens = sum(t for _, _, t in done)
    entry = {"ms": wall * 1e3, "requests_per_s": len(done) / wall, "tokens_per_s": tokens / wall,
             **_percentiles([ttft for ttft, _, _ in done], "ttft"),
             **_percentiles([gap for _, gaps, _ in done for gap in gaps], "itl")}
    return entry


def cases(device: torch.device, quick: bool) -> Iterator[Case]:
    setup = _setup(device, quick)
    load = setup[-1]
    for clients in CLIENTS:
        run = functools.partial(_run_load, setup, clients)
        yield Case(op="serving load", size=clients, implementations={"neva-serve": run},
                   label=f"{clients} clients x {load.requests_per_client} requests, 1 image + "
                         f"{load.question_words} words, {load.answer_tokens} answer tokens",
                   measure=lambda run=run: {"neva-serve": run()})
