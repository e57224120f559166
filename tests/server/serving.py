"""Running a neva server on 127.0.0.1 (a free port) in a thread of the test process, and talking to it."""
import base64
import json
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import torch

from neva_model import Engine
from neva_model.cli import DEFAULT_MODEL
from neva_model.image import checkpoint_image_stats
from neva_model.server.app import serving_in_thread
from neva_model.server.chat import Served
from neva_model.server.images import ImageLimits

MODEL_NAME = "neva-shapes"
EXAMPLES = DEFAULT_MODEL.parent.parent / "examples"


@contextmanager
def running_server(shipped, limits: ImageLimits = ImageLimits(), **engine_options):
    """Yields (base URL, engine) of a server in a thread of this process; stops it (and its engine thread) after."""
    model, tokenizer = shipped
    engine = Engine(model, detokenize=tokenizer.decode_generated, **engine_options)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core machine run far slower when threads contend
    try:
        with serving_in_thread(Served(engine, tokenizer, *checkpoint_image_stats(DEFAULT_MODEL), limits), MODEL_NAME) as url:
            yield url, engine
    finally:
        torch.set_num_threads(threads)


def image_url(name: str) -> str:
    return "data:image/png;base64," + base64.b64encode((EXAMPLES / name).read_bytes()).decode()


def question(text: str, picture: str | None = None) -> list[dict]:
    """One user message: the picture (if any) and the question."""
    parts = [{"type": "text", "text": text}]
    if picture is not None:
        parts.append({"type": "image_url", "image_url": {"url": image_url(picture)}})
    return [{"role": "user", "content": parts}]


def post(base: str, path: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict]:
    """A raw POST (for bodies the openai client would not send): (status, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
