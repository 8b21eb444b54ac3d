"""The detokenizer every generation shares: one reply's next token in, the text now safe to emit out.

:class:`RowDecoder` follows one reply (a row of a generator): end of turn (an EOS id, not counted), the token count,
incremental detokenising (``tokenizer.create_stream()``), stop sequences (cut from the text) and the row's own
``max_tokens``. While a stop sequence might still be forming, its possible start is held back (:func:`held_back`), so
a stop sequence never leaks into a stream. A reply that may hold tool calls also has a
:class:`~chatpack.engine.tool_calls.CallGuard`, which may end it early or hold back a call that could be a repeat (a
reply that ends while one is held back ends without it); stop sequences then apply to free text only.
:func:`decode` drives a generator's rows step by step; a single request is a generator of one row, a batch one of
several, and both go through the same step (the continuous batch feeds its rows' tokens to the same
:class:`RowDecoder`). A reply that asked for logprobs has a :class:`~chatpack.engine.logprobs.TokenTrack`:
:func:`decode` then reads each step's logits before the next token, and the row emits text at token boundaries only,
each piece with the entries of its tokens (``state.logprobs``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatpack.engine.grammar import masked
from chatpack.engine.logprobs import TokenLogprob, TokenTrack
from chatpack.engine.tool_calls import CallGuard


@dataclass
class StreamState:
    """One reply's token counts and finish reason: filled in while it decodes, final once it has ended."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None  # the emitted tokens' logprobs, when the request asked for them
    cached_tokens: int = 0  # prompt tokens whose keys/values a KV row already held (exact prefix reuse)


class RowDecoder:
    """One reply's decoding state; ``text`` is the reply so far (final once :attr:`done`: stop sequence cut off)."""

    def __init__(self, tokenizer: Any, eos_ids: Collection[int], stops: tuple[str, ...], max_new: int,
                 state: StreamState, guard: CallGuard | None = None, track: TokenTrack | None = None):
        self.state, self.track = state, track
        if track is not None and state.logprobs is None:
            state.logprobs = []
        self.text = ""
        self._detokenize = tokenizer.create_stream()
        self._eos_ids, self._stops, self._max_new, self._guard = eos_ids, stops, max_new, guard
        self._emitted = 0  # characters of ``text`` already handed out
        self._held_call = 0  # trailing characters the guard holds back: a call that may yet repeat an earlier one

    @property
    def done(self) -> bool:
        return self.state.finish_reason is not None

    @property
    def remaining(self) -> int:
        """Tokens the reply may still take (its ``max_tokens`` budget)."""
        return self._max_new - self.state.completion_tokens

    def push(self, token: int, logits: Any = None) -> str:
        """Take the row's next token (and, when the row tracks logprobs, the step's ``logits`` it was chosen from);
        return the text it makes safe to emit (all that is left once the row ends). A row that has ended ignores
        further tokens (a batch goes on for its other rows)."""
        if self.done:
            return ""
        if token in self._eos_ids:
            return self.finish("stop")
        self.state.completion_tokens += 1
        start = len(self.text)
        self.text += self._detokenize.decode(token)
        if self.track is not None:
            self.track.note(token, logits, start, len(self.text))
        cut, hold = self._guard.check(self.text) if self._guard else (None, 0)
        self._held_call = hold
        stops = self._stops if self._guard is None or self._guard.in_text else ()
        if cut is None:
            cut = find_stop(self.text, stops, self._emitted)
        if cut is not None:
            self._cut(cut)
            return self.finish("stop")
        if self.state.completion_tokens >= self._max_new:
            return self.finish("length")
        return self._emit(len(self.text) - max(hold, held_back(self.text, stops)))

    def finish(self, reason: str = "length") -> str:
        """End the row (if it has not ended yet) for ``reason``; return the text not handed out yet. A call the guard
        still holds back (the reply ended, at ``max_tokens`` or the context end, while it repeated an earlier call so
        far) is dropped: it would be a copy, or a cut-off start, of a call the reply already has."""
        if self.state.finish_reason is None:
            self.state.finish_reason = reason
            if self._held_call:
                self._cut(len(self.text) - self._held_call)
        return self._emit(len(self.text))

    def _cut(self, at: int) -> None:
        self.text = self.text[:at]
        if self.track is not None:
            self.track.cut(at)

    def _emit(self, upto: int) -> str:
        if self.track is not None:  # text goes out with its tokens: up to a token boundary (all of it at the end)
            upto = upto if self.done else min(upto, self.track.boundary(upto))
            self.state.logprobs.extend(self.track.release(self.text, upto if not self.done else len(self.text)))
        piece = self.text[self._emitted:upto]
        self._emitted = max(self._emitted, upto)
        return piece


def decode(generator: Any, rows: list[RowDecoder], matchers: list[Any] | None = None) -> Iterator[list[str]]:
    """Run ``generator`` (one row per :class:`RowDecoder`) until every row has ended; yield each step's new text per
    row. Rows that ended wait for the others; a generator that stops first ends the rest for "length". ``matchers``
    (one per row, None for a free row; :class:`~chatpack.engine.grammar.RowMatcher`) constrain the rows: each step's
    logits are masked (``set_logits``) before the generator draws, and the drawn tokens are fed back."""
    matchers = matchers or [None] * len(rows)
    tracked = any(row.track is not None for row in rows)
    constrained = any(m is not None for m in matchers)
    while not all(row.done for row in rows) and not generator.is_done():
        # The step's logits are computed before the token is chosen (and are the model's own: no temperature, no mask)
        raw = np.asarray(generator.get_logits()).reshape(len(rows), -1) if tracked or constrained else None
        logits = raw if tracked else [None] * len(rows)
        if constrained:
            scores = np.stack([r if m is None else masked(r, m.allowed()) for r, m in zip(raw, matchers)])
            generator.set_logits(scores.reshape(np.asarray(generator.get_logits()).shape))
        generator.generate_next_token()
        tokens = generator.get_next_tokens()
        pieces = []
        for row, token, row_logits, matcher in zip(rows, tokens, logits, matchers):
            piece = "" if row.done else row.push(int(token), row_logits)
            if matcher is not None and not row.done:
                matcher.consume(int(token))
                if matcher.finished:  # only EOS is left
                    piece += row.finish("stop")
            pieces.append(piece)
        yield pieces
    yield [row.finish("length") for row in rows]


# -- stop sequences ------------------------------------------------------------------------------------------------
def find_stop(text: str, stops: tuple[str, ...], emitted: int = 0) -> int | None:
    """Index where the earliest stop sequence starts in ``text`` (searching only where a new one can be), or None."""
    if not stops:
        return None
    start = max(0, emitted - max(len(s) for s in stops))
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence: what a stream holds back
    while a stop sequence might still be forming."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
