"""The ASGI app of `neva serve`: the routes, OpenAI-shaped errors, the engine thread's start and stop; `serve`
runs it in uvicorn."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..generate import Completion
from .chat import Served, engine_request
from .engine_loop import EngineLoop, RequestStream
from .errors import APIError
from .metrics import Metrics
from .protocol import ChatCompletionRequest, parse_chat_request
from .responses import DONE, ResponseIds, chunk_body, completion_body, event, usage, usage_chunk_body


def _server(served: Served, model_name: str, host: str, port: int, log_level: str = "info",
            shutdown_timeout_s: float = 30.0) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(create_app(served, model_name), host=host, port=port, log_level=log_level,
                                         timeout_graceful_shutdown=shutdown_timeout_s))


def serve(served: Served, model_name: str, host: str, port: int, shutdown_timeout_s: float = 30.0) -> None:
    """Serve until SIGINT / SIGTERM; then in-flight requests get `shutdown_timeout_s` to finish, the rest are
    aborted and the engine thread ends."""
    _server(served, model_name, host, port, shutdown_timeout_s=shutdown_timeout_s).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextmanager
def serving_in_thread(served: Served, model_name: str, host: str = "127.0.0.1", port: int = 0,
                      start_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve from a thread of this process (tests, benchmarks); yields the base URL, stops on exit. Port 0: a
    free one."""
    port = port or free_port(host)
    server = _server(served, model_name, host, port, log_level="warning")
    thread = threading.Thread(target=server.run, name="neva-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {host}:{port} did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)


def create_app(served: Served, model_name: str) -> FastAPI:
    loop, metrics = EngineLoop(served.engine), Metrics()
    state = {"stopping": False}

    @asynccontextmanager
    async def lifespan(_):
        loop.start()
        yield
        state["stopping"] = True  # uvicorn has let in-flight requests finish (or cancelled them at its timeout)
        loop.stop()

    app = FastAPI(title="neva", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine_loop, app.state.metrics = loop, metrics

    @app.exception_handler(APIError)
    async def api_error(_, error: APIError):
        metrics.count_request(str(error.status))
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, error: HTTPException):  # unknown routes and methods, in OpenAI's shape too
        return await api_error(None, APIError(error.status_code, str(error.detail), code=str(error.status_code)))

    @app.exception_handler(Exception)
    async def internal_error(_, error: Exception):
        return await api_error(None, APIError(500, f"internal error: {type(error).__name__}: {error}",
                                              type="server_error"))

    @app.get("/health")
    async def health():
        if state["stopping"]:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "neva"}]}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(served.engine), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request):
        if state["stopping"]:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        chat = parse_chat_request(await http.body())
        if chat.model != model_name:
            raise APIError(404, f"model: this server serves {model_name!r}, got {chat.model!r}", param="model",
                           code="model_not_found")
        arrived = time.perf_counter()
        request = await run_in_threadpool(engine_request, chat, served)  # decoding images and tokenizing
        stream = loop.submit(request)
        try:
            first = await stream.next()  # a refusal (queue full) is still an error status, not a broken stream
        except BaseException:
            loop.abort(stream)
            raise
        metrics.observe_ttft(time.perf_counter() - arrived)
        answer = _Answer(chat, stream, len(request.input_ids), ResponseIds(model_name), loop, metrics)
        if chat.stream:
            return StreamingResponse(answer.events(first), media_type="text/event-stream")
        return JSONResponse(await answer.whole(first))

    return app


class _Answer:
    """One request's outputs read from the engine thread, as one JSON body or as server-sent events."""

    def __init__(self, chat: ChatCompletionRequest, stream: RequestStream, prompt_tokens: int, ids: ResponseIds,
                 loop: EngineLoop, metrics: Metrics):
        self.chat, self.stream, self.prompt_tokens, self.ids = chat, stream, prompt_tokens, ids
        self.loop, self.metrics = loop, metrics

    def _finished(self, completion: Completion) -> None:
        self.metrics.count_request(completion.finish_reason)
        self.metrics.prompt_tokens += self.prompt_tokens
        self.metrics.completion_tokens += usage(self.prompt_tokens, completion)["completion_tokens"]

    async def whole(self, output) -> dict:
        try:
            while output.completion is None:
                output = await self.stream.next()
        except BaseException:
            self.loop.abort(self.stream)
            raise
        self._finished(output.completion)
        return completion_body(self.ids, output.completion, self.prompt_tokens)

    async def events(self, output):
        """The SSE stream: the role, text pieces as they become final, the finish reason, [usage], [DONE]. A client
        that goes away closes this generator, which aborts the request and frees its blocks."""
        finished = False
        try:
            yield event(chunk_body(self.ids, {"role": "assistant", "content": ""}))
            while True:
                if output.text:
                    yield event(chunk_body(self.ids, {"content": output.text}))
                if output.completion is not None:
                    finished = True
                    self._finished(output.completion)
                    yield event(chunk_body(self.ids, {}, output.completion.finish_reason))
                    if self.chat.stream_options is not None and self.chat.stream_options.include_usage:
                        yield event(usage_chunk_body(self.ids, output.completion, self.prompt_tokens))
                    yield DONE
                    return
                output = await self.stream.next()
        except APIError as error:  # the engine failed or is shutting down: the request is already gone there
            finished = True
            self.metrics.count_request(str(error.status))
            yield event(error.body())
        finally:
            if not finished:
                self.metrics.count_request("aborted")
                self.loop.abort(self.stream)
