"""The body of POST /v1/chat/completions: its fields, their types and ranges (pydantic), and the conversation.

Unknown fields are refused (as OpenAI does), so a misspelt option is an error rather than silently ignored.
neva's own options ride along as extra body fields: top_k, ignore_eos, and the SteerLM attributes (either
`steerlm`: true / "quality:9,humor:3" or each attribute by name, e.g. `"quality": 9`).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neva_kernels.errors import NevaError

from ..prompts import STEERLM_ATTRIBUTE_ORDER, SteerLMAttributes
from .errors import bad_request

MAX_STOP_STRINGS = 4  # as OpenAI


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(0.0, ge=0, le=2)  # neva's default is greedy, as `neva ask`
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # neva's extra body fields
    top_k: int = Field(0, ge=0)
    ignore_eos: bool = False
    steerlm: bool | str = False
    quality: int | None = Field(None, ge=0, le=9)
    toxicity: int | None = Field(None, ge=0, le=9)
    humor: int | None = Field(None, ge=0, le=9)
    creativity: int | None = Field(None, ge=0, le=9)
    violence: int | None = Field(None, ge=0, le=9)
    helpfulness: int | None = Field(None, ge=0, le=9)
    correctness: int | None = Field(None, ge=0, le=9)
    coherence: int | None = Field(None, ge=0, le=9)
    complexity: int | None = Field(None, ge=0, le=9)
    verbosity: int | None = Field(None, ge=0, le=9)
    not_appropriate: int | None = Field(None, ge=0, le=9)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def steerlm_attributes(self) -> SteerLMAttributes | None:
        given = {name: getattr(self, name) for name in STEERLM_ATTRIBUTE_ORDER if getattr(self, name) is not None}
        try:
            if isinstance(self.steerlm, str):
                parsed = SteerLMAttributes.parse(self.steerlm)
                return SteerLMAttributes(**{**{n: getattr(parsed, n) for n in STEERLM_ATTRIBUTE_ORDER}, **given})
            return SteerLMAttributes(**given) if self.steerlm or given else None
        except NevaError as error:
            raise bad_request(str(error), "steerlm") from error


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """The validated request; APIError 400 naming the field, what it expected and what it got."""
    try:
        request = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            raise bad_request(f"the body is not valid JSON: {errors[0]['msg']}") from error
        deepest = max(errors, key=lambda e: len(e["loc"]))  # of a union's branches, the one that got furthest
        param = _param(deepest["loc"])
        raise bad_request(f"{param or 'body'}: {deepest['msg']}, got {_short(deepest.get('input'))}",
                          param) from error
    stop = request.stop_strings
    if len(stop) > MAX_STOP_STRINGS or not all(stop):
        raise bad_request(f"stop: expected up to {MAX_STOP_STRINGS} non-empty strings, got {stop!r}", "stop")
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options: only allowed with stream: true", "stream_options")
    return request


def _param(loc: tuple) -> str | None:
    """pydantic's error location as a field path, e.g. messages[0].content[1].image_url.url; the names pydantic
    gives a union's branches (str, list[...], a tagged union's tag repeating the field after it) left out."""
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif not ("[" in item or item == "str" or path.endswith(f".{item}") or path == item):
            path += f".{item}" if path else item
    return path or None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def split_conversation(messages: list[Message]) -> tuple[str | None, list[tuple[Message, Message]], Message]:
    """(system text, earlier (user, assistant) turns, the last user message); APIError 400 if the roles are not
    an optional system message followed by user / assistant turns that end with a user message."""
    system = None
    if messages[0].role == "system":
        system, messages = text_only(messages[0], "messages[0]"), messages[1:]
    offset = 1 if system is not None else 0
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            raise bad_request(f"messages[{index + offset}].role: expected {expected!r} (an optional system message, "
                              f"then user and assistant turns ending with a user message), got {message.role!r}",
                              f"messages[{index + offset}].role")
    if not messages or len(messages) % 2 == 0:
        raise bad_request("messages: the conversation must end with a user message", "messages")
    turns = [(messages[i], messages[i + 1]) for i in range(0, len(messages) - 1, 2)]
    return system, turns, messages[-1]


def text_only(message: Message, param: str) -> str:
    """The text of a message that may not hold images (system, assistant)."""
    if isinstance(message.content, str):
        return message.content
    if any(isinstance(part, ImagePart) for part in message.content):
        raise bad_request(f"{param}.content: images are only accepted in user messages", f"{param}.content")
    return "\n".join(part.text for part in message.content)
