"""The model's chat reply as an Anthropic ``message`` object, and its chat chunks as the Messages stream events.

:func:`message_object` turns a whole ``chat.completion`` into a message: its text as a ``text`` block, each tool call
as a ``tool_use`` block (``input`` the call's arguments as an object), ``stop_reason`` from the finish reason
(:func:`stop_reason`), ``usage`` from the chat usage. :class:`MessageEvents` turns a stream of
``chat.completion.chunk`` dicts into the API's event sequence: ``message_start``, ``ping``, then per block
``content_block_start``, ``content_block_delta``... (``text_delta``, or ``input_json_delta`` for tool input),
``content_block_stop``, and last ``message_delta`` (``stop_reason``, ``stop_sequence``, ``usage``) and
``message_stop``; it also keeps the message it streams (:meth:`MessageEvents.message`), which is how a whole reply
with ``stop_sequences`` is built.

Stop sequences are found here, in the reply's free text (:class:`StopScanner`: a possible start is held back while
it may still become one, so none reaches the client), because the engine's stop reports no more than "stop": the
caller closes the chat stream on a hit, which ends generation, and the reply's output tokens are then counted from
the text generated up to that point (``count``; the engine's own count never arrives).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatpack.engine.detokenizer import find_stop, held_back

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def message_id() -> str:
    """A message id (every Messages reply's id is made here)."""
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id() -> str:
    """A ``tool_use`` block's id (the ids the engine gives its calls are OpenAI's ``call_...``)."""
    return f"toolu_{uuid.uuid4().hex[:24]}"


def usage(input_tokens: int | None, output_tokens: int | None) -> dict[str, Any]:
    """Anthropic's ``usage`` (no prompt cache here: its counts are 0)."""
    return {"input_tokens": input_tokens or 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output_tokens or 0, "service_tier": "standard"}


def stop_reason(finish_reason: str | None, output_tokens: int, max_tokens: int | None,
                stop_sequence: str | None = None) -> str:
    """``stop_sequence`` when one was found; ``max_tokens`` when the reply took all of them, but
    ``model_context_window_exceeded`` when it ran out of context first; ``tool_use`` for tool calls; else
    ``end_turn``."""
    if stop_sequence is not None:
        return "stop_sequence"
    if finish_reason == "length" and max_tokens is not None and output_tokens < max_tokens:
        return "model_context_window_exceeded"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments (JSON text) as the block's ``input``: a reply cut short (``max_tokens``) may leave them
    unfinished, read as far as they go (as the SDK reads a streamed input)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        try:
            import jiter

            value = jiter.from_json(arguments.encode(), partial_mode="trailing-strings")
        except (ImportError, ValueError):
            value = {}
    return value if isinstance(value, dict) else {}


@dataclass
class MessageShell:
    """One request's message object, less its content and outcome."""

    model: str
    id: str = field(default_factory=message_id)

    def body(self, content: list[dict[str, Any]], reason: str | None, sequence: str | None,
             counts: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": reason, "stop_sequence": sequence, "usage": counts}


def message_object(shell: MessageShell, reply: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """A whole ``chat.completion`` as the message object."""
    choice = reply["choices"][0]
    message, finish = choice.get("message") or {}, choice.get("finish_reason")
    calls = message.get("tool_calls") or []
    content: list[dict[str, Any]] = []
    if message.get("content") or not calls:
        content.append({"type": "text", "text": message.get("content") or ""})
    for call in calls:
        content.append({"type": "tool_use", "id": tool_use_id(), "name": call["function"]["name"],
                        "input": tool_input(call["function"]["arguments"])})
    counts = reply.get("usage") or {}
    output = counts.get("completion_tokens", 0)
    return shell.body(content, stop_reason(finish, output, max_tokens), None,
                      usage(counts.get("prompt_tokens"), output))


class StopScanner:
    """Finds the first of ``stops`` in a reply's text as it grows: :meth:`feed` returns the text now safe to send
    (all of it up to a stop sequence; meanwhile not a trailing part that could start one), ``hit`` the stop sequence
    found (the earliest in the text; of those starting at one place, the first given)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.text, self.sent, self.hit = stops, "", 0, None

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.hit is not None:
            return ""
        cut = find_stop(self.text, self.stops, self.sent)
        if cut is not None:
            self.hit = next(s for s in self.stops if self.text.startswith(s, cut))
            upto = cut
        else:
            upto = len(self.text) - held_back(self.text, self.stops)
        piece, self.sent = self.text[self.sent:upto], max(self.sent, upto)
        return piece

    def flush(self) -> str:
        """What is held back (the reply went on with something else, or ended)."""
        if self.hit is not None:
            return ""
        piece, self.sent = self.text[self.sent:], len(self.text)
        return piece


class MessageEvents:
    """The stream events of one message, fed chat chunks (see the module docstring). ``stops``: the stop sequences
    to find in its free text; ``input_tokens``: the prompt's count when known before the reply (else the chat usage
    gives it at the end); ``count``: tokens of a text, for a reply ended by a stop sequence."""

    def __init__(self, shell: MessageShell, stops: tuple[str, ...] = (), max_tokens: int | None = None,
                 input_tokens: int | None = None, count: Callable[[str], int] | None = None):
        self.shell, self.max_tokens, self.input_tokens, self.count = shell, max_tokens, input_tokens, count
        self.scanner = StopScanner(stops) if stops else None
        self.content: list[dict[str, Any]] = []  # the blocks so far (the open one last)
        self.arguments: list[str] = []  # each tool_use block's input as streamed (JSON text), by block index
        self.open = False
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None
        self.pieces = 0
        self.reason: str | None = None
        self.output_tokens = 0

    @property
    def stopped(self) -> bool:
        """A stop sequence ended the reply: the caller stops generating (closes the chat stream)."""
        return self.scanner is not None and self.scanner.hit is not None

    def start(self) -> list[dict[str, Any]]:
        counts = usage(self.input_tokens, 0)
        return [{"type": "message_start", "message": self.shell.body([], None, None, counts)}, {"type": "ping"}]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        choice = (chunk.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        if delta.get("content"):
            self.pieces += 1
            events += self._text(self.scanner.feed(delta["content"]) if self.scanner else delta["content"])
        for part in delta.get("tool_calls") or []:
            function = part.get("function") or {}
            if part.get("id"):
                events += self._text(self.scanner.flush() if self.scanner else "") + self._close()
                block = {"type": "tool_use", "id": tool_use_id(), "name": function.get("name", ""), "input": {}}
                events += self._open(block)
            if function.get("arguments") and self.open and self.content[-1]["type"] == "tool_use":
                self.arguments[-1] += function["arguments"]
                events.append({"type": "content_block_delta", "index": len(self.content) - 1,
                               "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}})
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.chat_usage = chunk["usage"]
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The last events: what is held back, the open block closed, ``message_delta`` and ``message_stop``."""
        events = self._text(self.scanner.flush()) if self.scanner else []
        if not self.content:  # an empty reply: one empty text block
            events += self._open({"type": "text", "text": ""})
        events += self._close()
        hit = self.scanner.hit if self.scanner else None
        counts = self.chat_usage or {}
        if hit is not None or not counts:  # ended here (or by a model that reports no usage): count what was made
            generated = self.scanner.text if self.scanner else "".join(
                b.get("text", "") for b in self.content)
            self.output_tokens = self.count(generated) if self.count else self.pieces
        else:
            self.output_tokens = counts.get("completion_tokens", 0)
        if self.input_tokens is None:
            self.input_tokens = counts.get("prompt_tokens")
        self.reason = stop_reason(self.finish_reason, self.output_tokens, self.max_tokens, hit)
        return events + [{"type": "message_delta", "delta": {"stop_reason": self.reason, "stop_sequence": hit},
                          "usage": usage(self.input_tokens, self.output_tokens)},
                         {"type": "message_stop"}]

    def message(self) -> dict[str, Any]:
        """The message streamed so far (complete once :meth:`finish` has run)."""
        content = []
        for index, block in enumerate(self.content):
            if block["type"] == "tool_use":
                block = {**block, "input": tool_input(self.arguments[index])}
            content.append(block)
        hit = self.scanner.hit if self.scanner else None
        return self.shell.body(content, self.reason, hit, usage(self.input_tokens, self.output_tokens))

    @staticmethod
    def error(body: dict[str, Any]) -> dict[str, Any]:
        """An error met mid-stream, as the ``error`` event (``body``: Anthropic's error body)."""
        return {"type": "error", "error": body.get("error", body)}

    def _text(self, piece: str) -> list[dict[str, Any]]:
        if not piece:
            return []
        events = []
        if not (self.open and self.content[-1]["type"] == "text"):
            events = self._close() + self._open({"type": "text", "text": ""})
        self.content[-1]["text"] += piece
        return events + [{"type": "content_block_delta", "index": len(self.content) - 1,
                          "delta": {"type": "text_delta", "text": piece}}]

    def _open(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        self.content.append(dict(block))
        self.arguments.append("")
        self.open = True
        return [{"type": "content_block_start", "index": len(self.content) - 1, "content_block": dict(block)}]

    def _close(self) -> list[dict[str, Any]]:
        if not self.open:
            return []
        self.open = False
        return [{"type": "content_block_stop", "index": len(self.content) - 1}]
