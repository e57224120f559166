"""neva_model.prompts: the llava-1.5 conversation, NeMo NeVA's SteerLM conversation and attribute strings.

The expected strings are written out by hand from llava-hf's chat template and NeMo's nvgpt conversation
(see the sources cited in neva_model/prompts.py), so a change in the layout shows up here.
"""
from __future__ import annotations

import dataclasses
import random

import pytest

from neva_kernels.errors import NevaTypeError, NevaValueError
from neva_model.prompts import (
    NEVA_SYSTEM_PROMPT,
    STEERLM_ATTRIBUTE_ORDER,
    SteerLMAttributes,
    build_prompt,
)

NEVA_INFERENCE_LABEL = "quality:6,toxicity:0,humor:0,creativity:0,violence:0,helpfulness:6,not_appropriate:0"
NEMO_TRAINING_LABEL = (
    "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4"
)
NVGPT_HEADER = (
    "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.\n\n"
)


# --- llava-1.5 (no SteerLM) ---

def test_llava_single_turn():
    assert build_prompt("What is shown?") == "USER: <image>\nWhat is shown? ASSISTANT:"


def test_llava_with_system():
    assert build_prompt("Why?", system="Answer briefly.") == "Answer briefly. USER: <image>\nWhy? ASSISTANT:"


def test_llava_multi_turn_puts_the_image_in_the_first_turn():
    prompt = build_prompt("And the color?", history=[("What animal is it?", "A cat."), ("Where?", "On a mat.")])
    assert prompt == (
        "USER: <image>\nWhat animal is it? ASSISTANT: A cat. "
        "USER: Where? ASSISTANT: On a mat. "
        "USER: And the color? ASSISTANT:"
    )


@pytest.mark.parametrize("num_images, prefix", [(0, ""), (1, "<image>\n"), (3, "<image>\n<image>\n<image>\n")])
def test_number_of_images(num_images, prefix):
    assert build_prompt("Compare.", num_images=num_images) == f"USER: {prefix}Compare. ASSISTANT:"


def test_placeholders_written_by_the_caller_stay_put():
    assert build_prompt("Is <image> a dog?") == "USER: Is <image> a dog? ASSISTANT:"
    history = [("Look: <image>", "Yes.")]
    assert build_prompt("Now?", history=history) == "USER: Look: <image> ASSISTANT: Yes. USER: Now? ASSISTANT:"


def test_custom_placeholder():
    assert build_prompt("Hi", image_placeholder="<img>") == "USER: <img>\nHi ASSISTANT:"


# --- NeMo NeVA SteerLM conversation ---

def test_steerlm_default_prompt():
    assert build_prompt("What is shown?", steerlm=SteerLMAttributes()) == (
        NVGPT_HEADER
        + "<extra_id_1>User\n<image>\nWhat is shown?\n"
        + f"<extra_id_1>Assistant\n<extra_id_2>{NEVA_INFERENCE_LABEL}\n"
    )


def test_steerlm_multi_turn_labels_every_assistant_turn():
    attributes = SteerLMAttributes(quality=9, humor=3)
    label = str(attributes)
    prompt = build_prompt("Why?", steerlm=attributes, system="Be kind.", history=[("What is it?", "A cat.")])
    assert prompt == (
        "<extra_id_0>System\nBe kind.\n\n"
        "<extra_id_1>User\n<image>\nWhat is it?\n"
        f"<extra_id_1>Assistant\n<extra_id_2>{label}\nA cat.\n"
        "<extra_id_1>User\nWhy?\n"
        f"<extra_id_1>Assistant\n<extra_id_2>{label}\n"
    )


def test_steerlm_label_ending_in_one_is_kept_whole():
    # NeMo strips the end of its template with rstrip("\n<extra_id_1>"), which would also eat a final "1".
    prompt = build_prompt("Hi", steerlm=SteerLMAttributes(not_appropriate=1))
    assert prompt.endswith("not_appropriate:1\n")


# --- SteerLM attribute strings ---

def test_attribute_strings_match_nemo():
    assert str(SteerLMAttributes()) == NEVA_INFERENCE_LABEL
    assert str(SteerLMAttributes.helpsteer()) == NEMO_TRAINING_LABEL
    every = SteerLMAttributes(**{name: index % 10 for index, name in enumerate(STEERLM_ATTRIBUTE_ORDER)})
    assert str(every) == (
        "quality:0,toxicity:1,humor:2,creativity:3,violence:4,helpfulness:5,correctness:6,coherence:7,"
        "complexity:8,verbosity:9,not_appropriate:0"
    )


def test_attributes_are_the_eleven_of_the_brief():
    assert {field.name for field in dataclasses.fields(SteerLMAttributes)} == set(STEERLM_ATTRIBUTE_ORDER)
    assert len(STEERLM_ATTRIBUTE_ORDER) == 11


def test_parse_round_trips():
    rng = random.Random(7)
    for _ in range(20):
        values = {name: rng.choice([None, *range(10)]) for name in STEERLM_ATTRIBUTE_ORDER}
        values["quality"] = rng.randrange(10)  # at least one attribute set
        attributes = SteerLMAttributes(**values)
        assert SteerLMAttributes.parse(str(attributes)) == attributes
    assert SteerLMAttributes.parse(" quality:9 , humor:3") == SteerLMAttributes(
        **{name: None for name in STEERLM_ATTRIBUTE_ORDER} | {"quality": 9, "humor": 3}
    )


@pytest.mark.parametrize("name", STEERLM_ATTRIBUTE_ORDER)
@pytest.mark.parametrize("value", [-1, 10])
def test_out_of_range_attribute_is_named(name, value):
    with pytest.raises(NevaValueError, match=f"{name} must be in 0..9, got {value}"):
        SteerLMAttributes(**{name: value})


@pytest.mark.parametrize("value", [4.0, "4", True])
def test_non_int_attribute_is_named(value):
    with pytest.raises(NevaTypeError, match="humor must be an int"):
        SteerLMAttributes(humor=value)


def test_no_attribute_set_is_an_error():
    with pytest.raises(NevaValueError, match="at least one"):
        SteerLMAttributes(**{name: None for name in STEERLM_ATTRIBUTE_ORDER})


@pytest.mark.parametrize(
    "text, message",
    [("quality=4", "bad SteerLM item"), ("speed:3", "bad SteerLM item"), ("quality:4,quality:5", "given twice"),
     ("quality:x", "quality must be an int"), ("quality:12", "quality must be in 0..9")],
)
def test_parse_errors(text, message):
    with pytest.raises(NevaValueError, match=message):
        SteerLMAttributes.parse(text)


# --- argument checks ---

@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(question=""), NevaValueError, "question must not be empty"),
        (dict(question=3), NevaTypeError, "question must be a str"),
        (dict(question="q", history=["just text"]), NevaValueError, r"history\[0\] must be a \(user, assistant\)"),
        (dict(question="q", history=[("q", "a", "b")]), NevaValueError, r"history\[0\] must be"),
        (dict(question="q", history=[("q", None)]), NevaTypeError, r"history\[0\]\[1\] must be a str"),
        (dict(question="q", steerlm=NEVA_INFERENCE_LABEL), NevaTypeError, "steerlm must be a SteerLMAttributes"),
        (dict(question="q", num_images=-1), NevaValueError, "num_images"),
        (dict(question="q", system=""), NevaValueError, "system must not be empty"),
        (dict(question="q", image_placeholder=""), NevaValueError, "image_placeholder must not be empty"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    question = kwargs.pop("question")
    with pytest.raises(error, match=message):
        build_prompt(question, **kwargs)


def test_default_system_is_nemos():
    assert NVGPT_HEADER == f"<extra_id_0>System\n{NEVA_SYSTEM_PROMPT}\n\n"
