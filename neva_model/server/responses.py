"""The JSON bodies of chat completions, whole and as server-sent-event chunks, in OpenAI's shapes."""
from __future__ import annotations

import json
import time
import uuid

from ..generate import Completion

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class ResponseIds:
    """The id, creation time and model name that every body of one response carries."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion: Completion) -> dict:
    generated = len(completion.token_ids) + (completion.finish_reason == "eos")  # the EOS token was generated too
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def completion_body(ids: ResponseIds, completion: Completion, prompt_tokens: int) -> dict:
    message = {"role": "assistant", "content": completion.text}
    choice = {"index": 0, "message": message, "finish_reason": FINISH_REASONS[completion.finish_reason],
              "logprobs": None}
    return {**ids.head("chat.completion"), "choices": [choice], "usage": usage(prompt_tokens, completion)}


def chunk_body(ids: ResponseIds, delta: dict, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason and FINISH_REASONS[finish_reason],
              "logprobs": None}
    return {**ids.head("chat.completion.chunk"), "choices": [choice]}


def usage_chunk_body(ids: ResponseIds, completion: Completion, prompt_tokens: int) -> dict:
    return {**ids.head("chat.completion.chunk"), "choices": [], "usage": usage(prompt_tokens, completion)}


def event(body: dict | str) -> str:
    """One server-sent event."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


DONE = event("[DONE]")
