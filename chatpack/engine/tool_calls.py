"""Reading tool calls out of a constrained reply, as it streams (the format is :mod:`chatpack.engine.guidance`'s).

:class:`CallScanner` follows the growing reply text once, character by character: free text or calls, and where each
call's name and arguments begin and end (the arguments are a JSON object: found by bracket depth, strings aware).
:class:`CallGuard` sits in the decode step: it ends a reply at a call that repeats an earlier one exactly, or after
the most calls allowed, and holds back a call's text while it may still turn out to be such a repeat.
:class:`ReplyReader` turns the text into OpenAI's message deltas (``content``, or ``tool_calls`` with ``index``,
``id``, ``function.name`` and ``function.arguments`` pieces) and into the final message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from chatpack.engine.guidance import ARGS_OPEN, CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR

_LITERAL_AFTER = {"open": "name", "args_open": "args", "close": "between", "separator": "open"}


@dataclass
class ScannedCall:
    start: int  # where the call's text begins
    name: str = ""
    args_start: int | None = None
    args_end: int | None = None
    end: int | None = None  # set once the call is complete

    def arguments(self, text: str) -> str:
        return "" if self.args_start is None else text[self.args_start:self.args_end or len(text)]


class CallScanner:
    """Incremental reader of one reply's text. ``mode`` is None until the start decides: ``"text"`` or ``"calls"``."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.calls: list[ScannedCall] = []
        self._pos, self._state, self._literal = 0, "open", 0
        self._depth, self._in_string, self._escaped = 0, False, False

    def feed(self, text: str) -> None:
        """Read ``text`` (the whole reply so far; it only grows) from where the last call stopped."""
        if self.mode is None:
            if text.startswith(CALL_OPEN[:len(text)]) and len(text) < len(CALL_OPEN):
                return  # could still be either
            self.mode = "calls" if text.startswith(CALL_OPEN) else "text"
        if self.mode == "text":
            return
        while self._pos < len(text):
            self._step(text[self._pos])
            self._pos += 1

    def _step(self, char: str) -> None:
        state = self._state
        if state in _LITERAL_AFTER:
            if state == "open" and self._literal == 0:
                self.calls.append(ScannedCall(self._pos))
            literal = {"open": CALL_OPEN, "args_open": ARGS_OPEN[1:], "close": CALL_CLOSE,
                       "separator": CALL_SEPARATOR}[state]
            self._literal += 1
            if self._literal == len(literal):
                self._state, self._literal = _LITERAL_AFTER[state], 0
                if state == "args_open":
                    self.calls[-1].args_start = self._pos + 1
                elif state == "close":
                    self.calls[-1].end = self._pos + 1
        elif state == "name":
            if char == '"':
                self._state = "args_open"
            else:
                self.calls[-1].name += char
        elif state == "args":
            self._json_char(char)
        elif state == "between":
            self._state, self._literal = "separator", 0
            self._step(char)

    def _json_char(self, char: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            return
        if char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 0:
                self.calls[-1].args_end = self._pos + 1
                self._state = "close"  # next: CALL_CLOSE, which begins with the call object's own closing brace


class CallGuard:
    """The decode step's view of a reply that may hold tool calls (see the module docstring)."""

    def __init__(self, max_calls: int):
        self.scanner, self.max_calls = CallScanner(), max_calls

    @property
    def in_text(self) -> bool:
        """The reply is free text (``stop`` sequences apply), not calls."""
        return self.scanner.mode == "text"

    def check(self, text: str) -> tuple[int | None, int]:
        """(where the reply ends, or None; how many trailing characters to hold back) after ``text`` grew."""
        self.scanner.feed(text)
        calls = self.scanner.calls
        done = [c for c in calls if c.end is not None]
        if not done:
            return None, 0
        last = done[-1]
        if any(_same(text, last, earlier) for earlier in done[:-1]):
            return done[-2].end, 0  # the repeat and everything after it go
        if len(done) >= self.max_calls:
            return last.end, 0
        current = calls[-1] if calls[-1].end is None else None
        if current is None or any(_prefix(text, current, earlier) for earlier in done):
            return None, len(text) - last.end
        return None, 0


def _same(text: str, a: ScannedCall, b: ScannedCall) -> bool:
    return text[a.start:a.end] == text[b.start:b.end]


def _prefix(text: str, current: ScannedCall, earlier: ScannedCall) -> bool:
    return text[earlier.start:earlier.end].startswith(text[current.start:])


class ReplyReader:
    """OpenAI message deltas from a reply's text pieces, and the final message (see the module docstring)."""

    def __init__(self) -> None:
        self.scanner = CallScanner()
        self.text = ""
        self.ids: list[str] = []
        self._sent_args: list[int] = []  # argument characters already sent, per call
        self._sent_text = 0

    def feed(self, piece: str) -> list[dict[str, Any]]:
        """The deltas ``piece`` completes (may be none while the reply's start is undecided)."""
        self.text += piece
        self.scanner.feed(self.text)
        if self.scanner.mode == "text":
            return self._text_delta()
        deltas = []
        for index, call in enumerate(self.scanner.calls):
            if call.args_start is None:
                break  # the name is not complete yet
            if index == len(self.ids):
                self.ids.append(call_id())
                self._sent_args.append(0)
                deltas.append({"tool_calls": [{"index": index, "id": self.ids[index], "type": "function",
                                               "function": {"name": call.name, "arguments": ""}}]})
            arguments = call.arguments(self.text)
            if len(arguments) > self._sent_args[index]:
                deltas.append({"tool_calls": [{"index": index,
                                               "function": {"arguments": arguments[self._sent_args[index]:]}}]})
                self._sent_args[index] = len(arguments)
        return deltas

    def close(self) -> list[dict[str, Any]]:
        """Deltas for what is left once the reply has ended (an undecided start is text after all)."""
        if self.scanner.mode is None:
            self.scanner.mode = "text"
        return self._text_delta() if self.scanner.mode == "text" else []

    @property
    def complete_calls(self) -> bool:
        """The reply is tool calls, and every one of them is complete."""
        calls = self.scanner.calls
        return self.scanner.mode == "calls" and bool(calls) and all(c.end is not None for c in calls)

    def message(self) -> dict[str, Any]:
        """The assistant message: ``content``, or ``tool_calls`` (``content`` None) when the reply is calls. A reply
        cut short keeps its last call with the arguments so far; a call cut inside its name is left out."""
        self.close()
        if self.scanner.mode == "text":
            return {"role": "assistant", "content": self.text}
        named = [call for call in self.scanner.calls if call.args_start is not None]
        if not named:
            return {"role": "assistant", "content": ""}
        while len(self.ids) < len(named):
            self.ids.append(call_id())
        calls = [{"id": self.ids[i], "type": "function",
                  "function": {"name": call.name, "arguments": call.arguments(self.text)}}
                 for i, call in enumerate(named)]
        return {"role": "assistant", "content": None, "tool_calls": calls}

    def _text_delta(self) -> list[dict[str, Any]]:
        piece, self._sent_text = self.text[self._sent_text:], len(self.text)
        return [{"content": piece}] if piece else []


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
