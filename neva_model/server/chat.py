"""A validated chat request -> the engine's Request: images decoded, conversation rendered, ids, sampling.

Each user message's images go first, one placeholder line each, then its text parts (llava-hf's chat template
does the same), so that a question with an image renders exactly as `neva ask` renders it.
"""
from __future__ import annotations

from dataclasses import dataclass

from neva_kernels.errors import NevaError

from ..generate import Engine, Request
from ..image import preprocess_images
from ..prompts import build_prompt
from ..sampling import SamplingParams
from ..tokenizer import NevaTokenizer, model_input_ids
from .errors import bad_request
from .images import ImageLimits, load_image
from .protocol import ChatCompletionRequest, ImagePart, Message, split_conversation, text_only


@dataclass(frozen=True)
class Served:
    """What every request is turned into an engine Request with."""
    engine: Engine
    tokenizer: NevaTokenizer
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    limits: ImageLimits


def engine_request(chat: ChatCompletionRequest, served: Served) -> Request:
    """The engine Request of `chat`; APIError 400 for anything the model cannot take."""
    system, turns, last = split_conversation(chat.messages)
    images, placeholder = [], served.tokenizer.image_token
    offset = 1 if system is not None else 0

    def user_text(message: Message, index: int) -> str:
        if isinstance(message.content, str):
            return message.content
        texts, count = [], 0
        for number, part in enumerate(message.content):
            if isinstance(part, ImagePart):
                images.append(load_image(part.image_url.url, served.limits,
                                         f"messages[{index}].content[{number}].image_url"))
                count += 1
            else:
                texts.append(part.text)
        return (placeholder + "\n") * count + "\n".join(texts)

    history = [(user_text(u, offset + 2 * i), text_only(a, f"messages[{offset + 2 * i + 1}]"))
               for i, (u, a) in enumerate(turns)]
    question = user_text(last, len(chat.messages) - 1)
    engine = served.engine
    config = engine.model.config
    try:
        prompt = build_prompt(question, steerlm=chat.steerlm_attributes(), system=system, history=history,
                              image_placeholder=placeholder, num_images=len(images))
        ids = model_input_ids(served.tokenizer, prompt, config, len(images))
        pixels = preprocess_images(images, config.vision.image_size, served.image_mean, served.image_std) \
            if images else None
    except NevaError as error:
        raise bad_request(str(error), "messages") from error
    room = engine.max_seq_len - len(ids)
    limit = chat.answer_limit
    if room < 1 or (limit is not None and limit > room):
        raise bad_request(f"the prompt takes {len(ids)} tokens and {limit or 1} more were asked for, past the "
                          f"server's context of {engine.max_seq_len} tokens", "messages", "context_length_exceeded")
    try:
        sampling = SamplingParams(max_new_tokens=limit or room, temperature=chat.temperature, top_k=chat.top_k,
                                  top_p=chat.top_p, seed=chat.seed, stop=chat.stop_strings,
                                  ignore_eos=chat.ignore_eos)
        request = Request(ids, pixels, sampling)
        engine.check_request(request)
    except NevaError as error:
        raise bad_request(str(error)) from error
    return request
