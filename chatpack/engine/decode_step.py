"""The decode step every generation shares: one reply's next token in, the text now safe to emit out.

:class:`RowDecoder` follows one reply (a row of a generator): end of turn (an EOS id, not counted), the token count,
incremental detokenising (``tokenizer.create_stream()``), stop sequences (cut from the text) and the row's own
``max_tokens``. While a stop sequence might still be forming, its possible start is held back, so a stop sequence
never leaks into a stream. A reply that may hold tool calls also has a :class:`~chatpack.engine.tool_calls.CallGuard`,
which may end it early or hold back a call that could be a repeat; stop sequences then apply to free text only.
:func:`decode` drives a generator's rows step by step; a single request is a generator of one row, a batch one of
several, and both go through the same step.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from chatpack.engine.stops import find_stop, held_back
from chatpack.engine.tool_calls import CallGuard


@dataclass
class StreamState:
    """One reply's token counts and finish reason: filled in while it decodes, final once it has ended."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None


class RowDecoder:
    """One reply's decoding state; ``text`` is the reply so far (final once :attr:`done`: stop sequence cut off)."""

    def __init__(self, tokenizer: Any, eos_ids: Collection[int], stops: tuple[str, ...], max_new: int,
                 state: StreamState, guard: CallGuard | None = None):
        self.state = state
        self.text = ""
        self._detokenize = tokenizer.create_stream()
        self._eos_ids, self._stops, self._max_new, self._guard = eos_ids, stops, max_new, guard
        self._emitted = 0  # characters of ``text`` already handed out

    @property
    def done(self) -> bool:
        return self.state.finish_reason is not None

    def push(self, token: int) -> str:
        """Take the row's next token; return the text it makes safe to emit (all that is left once the row ends).
        A row that has ended ignores further tokens (a batch goes on for its other rows)."""
        if self.done:
            return ""
        if token in self._eos_ids:
            return self.finish("stop")
        self.state.completion_tokens += 1
        self.text += self._detokenize.decode(token)
        cut, hold = self._guard.check(self.text) if self._guard else (None, 0)
        stops = self._stops if self._guard is None or self._guard.in_text else ()
        if cut is None:
            cut = find_stop(self.text, stops, self._emitted)
        if cut is not None:
            self.text = self.text[:cut]
            return self.finish("stop")
        if self.state.completion_tokens >= self._max_new:
            return self.finish("length")
        return self._emit(len(self.text) - max(hold, held_back(self.text, stops)))

    def finish(self, reason: str = "length") -> str:
        """End the row (if it has not ended yet) for ``reason``; return the text not handed out yet."""
        if self.state.finish_reason is None:
            self.state.finish_reason = reason
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        piece = self.text[self._emitted:upto]
        self._emitted = max(self._emitted, upto)
        return piece


def decode(generator: Any, rows: list[RowDecoder]) -> Iterator[list[str]]:
    """Run ``generator`` (one row per :class:`RowDecoder`) until every row has ended; yield each step's new text per
    row. Rows that ended wait for the others; a generator that stops first ends the rest for "length"."""
    while not all(row.done for row in rows) and not generator.is_done():
        generator.generate_next_token()
        tokens = generator.get_next_tokens()
        yield [row.push(int(token)) for row, token in zip(rows, tokens)]
    yield [row.finish("length") for row in rows]
