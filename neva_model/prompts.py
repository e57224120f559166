"""Prompts for NeVA: the llava-1.5 conversation and NeMo NeVA's SteerLM-conditioned conversation.

Without SteerLM attributes, `build_prompt` writes the llava-1.5 conversation as llava-hf's chat template renders
it: ``"USER: <image>\\n{question} ASSISTANT:"``, earlier turns as ``"USER: {q} ASSISTANT: {a} "``, an optional
system text first.

With SteerLM attributes it writes NeMo NeVA's "nvgpt" conversation, the one its SteerLM-tuned models were trained
on. Where NeMo puts the attribute string was read from NVIDIA/NeMo (no code taken from there):
- nemo/collections/multimodal/data/neva/conversation.py (`conv_nvgpt`, `SeparatorStyle.NVGPT`): the prompt is
  ``"<extra_id_0>System\\n" + system + "<extra_id_1>"``, then per message ``role + "\\n" + text + "\\n" +
  "<extra_id_1>"``, the system text ending in a blank line;
- nemo/collections/multimodal/data/neva/neva_dataset.py (`preprocess_nvgpt`): every assistant message starts with
  ``"<extra_id_2>" + attributes + "\\n"``; for inference the last, empty assistant message keeps only that line,
  so the prompt ends ``"<extra_id_1>Assistant\\n<extra_id_2>{attributes}\\n"``;
- nemo/collections/nlp/modules/common/text_generation_strategy.py (NeVA's `process_prompts`): the attributes NeVA
  asks for at inference, ``quality:6,toxicity:0,humor:0,creativity:0,violence:0,helpfulness:6,not_appropriate:0``
  (the defaults of `SteerLMAttributes`), and the image placeholder followed by a newline in the user's text.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from neva_kernels.errors import NevaTypeError, NevaValueError

DEFAULT_IMAGE_PLACEHOLDER = "<image>"

# The system text of NeMo's nvgpt conversation (used only when SteerLM attributes are given).
NEVA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The order NeMo writes attributes in: OpenAssistant's four, then violence, then HelpSteer's five, then
# not_appropriate. Both strings NeMo uses (NeVA inference, HelpSteer training default) follow this order.
STEERLM_ATTRIBUTE_ORDER = (
    "quality", "toxicity", "humor", "creativity", "violence", "helpfulness",
    "correctness", "coherence", "complexity", "verbosity", "not_appropriate",
)


@dataclasses.dataclass(frozen=True)
class SteerLMAttributes:
    """SteerLM attribute values (each an int 0..9) that condition a NeVA SteerLM model's answer.

    An attribute set to None is left out of the string, as NeMo leaves out attributes a model was not trained on.
    The defaults are NeVA's inference attributes; `helpsteer()` gives NeMo's HelpSteer training default.
    `str(attributes)` is the exact string NeMo writes, e.g. ``quality:6,toxicity:0,...,not_appropriate:0``.
    """

    quality: int | None = 6
    toxicity: int | None = 0
    humor: int | None = 0
    creativity: int | None = 0
    helpfulness: int | None = 6
    correctness: int | None = None
    coherence: int | None = None
    complexity: int | None = None
    verbosity: int | None = None
    violence: int | None = 0
    not_appropriate: int | None = 0

    def __post_init__(self):
        for name in STEERLM_ATTRIBUTE_ORDER:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise NevaTypeError(f"SteerLM attribute {name} must be an int 0..9 or None, got {value!r}")
            if not 0 <= value <= 9:
                raise NevaValueError(f"SteerLM attribute {name} must be in 0..9, got {value}")
        if all(getattr(self, name) is None for name in STEERLM_ATTRIBUTE_ORDER):
            raise NevaValueError("SteerLMAttributes needs at least one attribute set (all are None)")

    @classmethod
    def helpsteer(cls, **overrides: int | None) -> SteerLMAttributes:
        """NeMo's default label for NeVA training turns without one (OpenAssistant + HelpSteer attributes)."""
        values = dict(quality=4, toxicity=0, humor=0, creativity=0, helpfulness=4, correctness=4, coherence=4,
                      complexity=4, verbosity=4, violence=None, not_appropriate=None)
        return cls(**{**values, **overrides})

    @classmethod
    def parse(cls, text: str) -> SteerLMAttributes:
        """Read NeMo's string form back, e.g. ``"quality:9,humor:3"``; attributes it does not name are None."""
        if not isinstance(text, str):
            raise NevaTypeError(f"SteerLM attribute string must be a str, got {type(text).__name__}")
        values: dict[str, int] = {}
        for item in text.split(","):
            name, sep, number = item.strip().partition(":")
            name = name.strip()
            if not sep or name not in STEERLM_ATTRIBUTE_ORDER:
                raise NevaValueError(
                    f"bad SteerLM item {item.strip()!r} in {text!r}: expected name:value with name one of "
                    f"{', '.join(STEERLM_ATTRIBUTE_ORDER)}"
                )
            if name in values:
                raise NevaValueError(f"SteerLM attribute {name} given twice in {text!r}")
            if not number.strip().isdigit():
                raise NevaValueError(f"SteerLM attribute {name} must be an int 0..9, got {number.strip()!r}")
            values[name] = int(number)
        return cls(**{name: values.get(name) for name in STEERLM_ATTRIBUTE_ORDER})

    def __str__(self) -> str:
        return ",".join(
            f"{name}:{getattr(self, name)}" for name in STEERLM_ATTRIBUTE_ORDER if getattr(self, name) is not None
        )


def build_prompt(
    question: str,
    *,
    steerlm: SteerLMAttributes | None = None,
    system: str | None = None,
    image_placeholder: str = DEFAULT_IMAGE_PLACEHOLDER,
    history: Sequence[tuple[str, str]] = (),
    num_images: int = 1,
) -> str:
    """The prompt text for `question`, ending where the model's answer begins.

    `history` holds earlier (user, assistant) turns, oldest first. If no turn already contains
    `image_placeholder`, `num_images` placeholders (each followed by a newline) are put at the start of the first
    user turn, as llava-hf and NeMo do; placeholders the caller wrote are left where they are.
    Without `steerlm` the llava-1.5 conversation is written, with it NeMo NeVA's SteerLM conversation (whose
    system text defaults to `NEVA_SYSTEM_PROMPT`).
    """
    _check_text(question, "question")
    if system is not None:
        _check_text(system, "system")
    _check_text(image_placeholder, "image_placeholder")
    if steerlm is not None and not isinstance(steerlm, SteerLMAttributes):
        raise NevaTypeError(f"steerlm must be a SteerLMAttributes or None, got {type(steerlm).__name__}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise NevaValueError(f"num_images must be an int >= 0, got {num_images!r}")
    turns = _checked_history(history)
    users = [user for user, _ in turns] + [question]
    if not any(image_placeholder in text for text in users):
        users[0] = (image_placeholder + "\n") * num_images + users[0]
    answers = [answer for _, answer in turns]
    if steerlm is None:
        return _llava_conversation(users, answers, system)
    return _nvgpt_conversation(users, answers, NEVA_SYSTEM_PROMPT if system is None else system, str(steerlm))


def _llava_conversation(users: list[str], answers: list[str], system: str | None) -> str:
    parts = [] if system is None else [f"{system} "]
    for user, answer in zip(users, answers):
        parts.append(f"USER: {user} ASSISTANT: {answer} ")
    parts.append(f"USER: {users[-1]} ASSISTANT:")
    return "".join(parts)


def _nvgpt_conversation(users: list[str], answers: list[str], system: str, attributes: str) -> str:
    parts = [f"<extra_id_0>System\n{system}\n\n"]
    for user, answer in zip(users, answers):
        parts.append(f"<extra_id_1>User\n{user}\n<extra_id_1>Assistant\n<extra_id_2>{attributes}\n{answer}\n")
    parts.append(f"<extra_id_1>User\n{users[-1]}\n<extra_id_1>Assistant\n<extra_id_2>{attributes}\n")
    return "".join(parts)


def _check_text(value, name: str) -> None:
    if not isinstance(value, str):
        raise NevaTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise NevaValueError(f"{name} must not be empty")


def _checked_history(history) -> list[tuple[str, str]]:
    turns = []
    for index, turn in enumerate(history):
        if not isinstance(turn, (tuple, list)) or len(turn) != 2:
            raise NevaValueError(f"history[{index}] must be a (user, assistant) pair, got {turn!r}")
        _check_text(turn[0], f"history[{index}][0]")
        _check_text(turn[1], f"history[{index}][1]")
        turns.append((turn[0], turn[1]))
    return turns
