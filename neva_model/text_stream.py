"""An answer's text as its tokens arrive: incremental detokenization, stop strings, what is safe to show.

Decoding the whole answer at every token costs O(n^2) over an answer; here each token decodes only a short
window (as Hugging Face's TextStreamer and vLLM do): the tokens since the last emitted piece plus the one before,
whose text is subtracted so that a tokenizer's leading-space rules see their context. A window that ends inside
a multi-byte character (U+FFFD) waits for the next token.

Streamed text never shows a stop string: the stream stops at the cut, and the end of the text that could still
be the beginning of a stop string is held back until the next token decides.
"""
from __future__ import annotations

from collections.abc import Callable

from .sampling import find_stop

_INCOMPLETE = "\ufffd"  # what a byte-level decoder gives for a partial UTF-8 sequence


class TextStream:
    """The text of one answer: `add` each new token, read `text`, `stopped`, and `take_ready()` to stream."""

    def __init__(self, detokenize: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self._detokenize, self._stop = detokenize, stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._tokens: list[int] = []
        self._prefix = self._read = 0  # tokens[_prefix:_read] is the decoded context, tokens[_read:] not yet text
        self.text = ""
        self.stopped = False  # a stop string was found; text ends just before it
        self._sent = 0  # characters of text already handed out by take_ready

    def add(self, token: int) -> None:
        """Append one token of the answer (ignored once a stop string ended the text)."""
        if self.stopped:
            return
        self._tokens.append(token)
        context = self._detokenize(self._tokens[self._prefix:self._read])
        window = self._detokenize(self._tokens[self._prefix:])
        if len(window) <= len(context) or window.endswith(_INCOMPLETE):
            return
        searched = max(0, len(self.text) - self._longest_stop + 1)  # earlier text held no stop string
        self.text += window[len(context):]
        self._prefix, self._read = self._read, len(self._tokens)
        cut = find_stop(self.text[searched:], self._stop)
        if cut is not None:
            self.text, self.stopped = self.text[:searched + cut], True

    def take_ready(self, final: bool = False) -> str:
        """The text not handed out yet that no later token can change (with `final`, all of it)."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        ready, self._sent = self.text[self._sent:end], max(self._sent, end)
        return ready

    def _held_back(self) -> int:
        """Length of the longest end of text that is the beginning of a stop string."""
        for size in range(min(self._longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self._stop):
                return size
        return 0
