"""An answer's streamed text: the same as decoding it whole, linear work, stop strings never shown."""
import random

import pytest

from neva_model.text_stream import TextStream
from neva_model.tokenizer import load_tokenizer
from neva_model.train import DEFAULT_CHECKPOINT


def _stream(detokenize, tokens, stop=()):
    text, pieces = TextStream(detokenize, stop), []
    for i, token in enumerate(tokens):
        text.add(token)
        pieces.append(text.take_ready(final=i == len(tokens) - 1 or text.stopped))
        if text.stopped:
            break
    return text, pieces


def test_the_shipped_tokenizer_streams_exactly_its_whole_decode():
    """Its WordPiece decoder joins words with spaces and glues punctuation: context-dependent pieces."""
    tokenizer = load_tokenizer(DEFAULT_CHECKPOINT)
    rng = random.Random(0)
    for _ in range(50):
        tokens = [rng.randrange(3, tokenizer.vocab_size) for _ in range(rng.randrange(1, 30))]
        text, pieces = _stream(tokenizer.decode, tokens)
        assert "".join(pieces) == text.text == tokenizer.decode(tokens)


def _bytes_detokenize(ids):
    """A byte-level tokenizer: each id is one byte, an incomplete UTF-8 character decodes to U+FFFD."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_a_character_split_over_tokens_waits_for_its_last_byte():
    tokens = list("naïve → ok".encode())
    text, pieces = _stream(_bytes_detokenize, tokens)
    assert "".join(pieces) == text.text == "naïve → ok"
    assert "\ufffd" not in "".join(pieces)


def test_each_token_decodes_a_short_window_not_the_whole_answer():
    decoded = []

    def detokenize(ids):
        decoded.append(len(ids))
        return " ".join(map(str, ids))

    _stream(detokenize, list(range(2000)))
    assert sum(decoded) <= 4 * 2000  # whole-answer decoding would be about 2000**2 / 2


@pytest.mark.parametrize("stop", [("STOP",), ("nothing", "OP"), ("S",)])
def test_a_stop_string_split_over_tokens_is_never_streamed(stop):
    pieces = ["The ", "answer", " S", "T", "O", "P", " more"]
    ids = list(range(len(pieces)))
    text, streamed = _stream(lambda t: "".join(pieces[i] for i in t), ids, stop)
    cut = min(i for i in ("The answer STOP more".find(s) for s in stop) if i >= 0)
    assert text.stopped and text.text == "The answer STOP more"[:cut] == "".join(streamed)


def test_text_that_may_begin_a_stop_string_is_held_back_until_decided():
    pieces = ["a", " <", "/", "s", "x"]
    text = TextStream(lambda t: "".join(pieces[i] for i in t), ("</s>",))
    shown = []
    for i in range(len(pieces)):
        text.add(i)
        shown.append(text.take_ready())
    assert shown == ["a", " ", "", "", "</sx"]  # "</s" might have become "</s>" until "x" came
    assert not text.stopped
