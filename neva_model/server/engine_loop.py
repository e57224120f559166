"""One thread runs the engine for every connection: it takes new requests and aborts from a queue, steps the
engine, and hands each request's outputs back to the event loop.

The handoff is lock-free: the event loop puts commands on a queue.SimpleQueue, the engine thread alone touches
the engine, and outputs return through loop.call_soon_threadsafe into one asyncio.Queue per request. The thread
blocks on the command queue while the engine is idle, so an idle server uses no CPU.
"""
from __future__ import annotations

import asyncio
import queue
import threading

from neva_kernels.errors import NevaError

from ..generate import Engine, QueueFullError, Request, StepOutput
from .errors import APIError


class RequestStream:
    """The outputs of one request, read on the event loop with `next()` (raises the request's APIError)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._queue = loop, asyncio.Queue()
        self.request_id: int | None = None  # the engine's id, set by the engine thread

    def deliver(self, item: StepOutput | APIError) -> None:
        """Called from the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is reading any more
            pass

    async def next(self) -> StepOutput:
        item = await self._queue.get()
        if isinstance(item, APIError):
            raise item
        return item


class EngineLoop:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[int, RequestStream] = {}  # engine thread only
        self._thread = threading.Thread(target=self._run, name="neva-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> RequestStream:
        """Queue `request` for the engine (call on the event loop); its outputs come through the stream."""
        stream = RequestStream(asyncio.get_running_loop())
        self._commands.put(("add", request, stream))
        return stream

    def abort(self, stream: RequestStream) -> None:
        self._commands.put(("abort", stream))

    def stop(self) -> None:
        """Abort whatever is still running (its readers get a 503) and end the thread."""
        self._commands.put(("stop",))
        self._thread.join()

    # ---- the engine thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            commands = [self._commands.get()] if not self.engine.has_unfinished() else []
            while True:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            for command in commands:
                if command[0] == "stop":
                    self._fail_all(APIError(503, "the server is shutting down", type="server_error",
                                            code="shutting_down"))
                    return
                if command[0] == "add":
                    self._add(*command[1:])
                else:
                    self._abort(command[1])
            if self.engine.has_unfinished():
                self._step()

    def _add(self, request: Request, stream: RequestStream) -> None:
        try:
            stream.request_id = self.engine.add_request(request)
        except QueueFullError as error:
            stream.deliver(APIError(429, f"too many requests are queued, retry later ({error})",
                                    type="rate_limit_error", code="queue_full"))
            return
        except NevaError as error:
            stream.deliver(APIError(400, str(error)))
            return
        self._streams[stream.request_id] = stream

    def _abort(self, stream: RequestStream) -> None:
        if stream.request_id is not None and self._streams.pop(stream.request_id, None) is not None:
            self.engine.abort(stream.request_id)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as error:  # a failed step (e.g. a device error) fails its requests, not the server
            self._fail_all(APIError(500, f"the engine failed: {type(error).__name__}: {error}", type="server_error"))
            return
        for output in outputs:
            stream = self._streams[output.request_id]
            if output.completion is not None:
                del self._streams[output.request_id]
            stream.deliver(output)

    def _fail_all(self, error: APIError) -> None:
        for request_id, stream in self._streams.items():
            self.engine.abort(request_id)
            stream.deliver(error)
        self._streams.clear()
