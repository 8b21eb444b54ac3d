"""The model's chat reply as a Responses API ``response`` object, and its chat chunks as Responses stream events.

:class:`ResponseShell` holds what every Response object of one request repeats (id, model, the request's echoed
fields). :func:`response_object` turns a whole ``chat.completion`` into a Response: the text as a ``message`` item with
one ``output_text`` part, each tool call as a ``function_call`` item, ``status`` ``incomplete`` with
``incomplete_details.reason`` ``max_output_tokens`` when the length ran out. :class:`ResponseEvents` turns a stream
of ``chat.completion.chunk`` dicts into OpenAI's event sequence with increasing ``sequence_number``:
``response.created``, ``response.in_progress``, then per item ``response.output_item.added``, (text)
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done`` or (call) ``response.function_call_arguments.delta``...,
``response.function_call_arguments.done``, then ``response.output_item.done``; last ``response.completed`` or
``response.incomplete`` (or, for an error met mid-stream, ``error`` and ``response.failed``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

DEFAULTS = {"instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": None, "top_p": None, "tool_choice": "auto", "tools": [],
            "text": {"format": {"type": "text"}},
            "truncation": "disabled", "store": False, "background": False, "previous_response_id": None,
            "reasoning": None, "service_tier": "default", "user": None}


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage as the Responses API's ``usage`` (cached: the prompt prefix the engine reused; no reasoning
    tokens here)."""
    if not chat_usage:
        return None
    prompt, completion = chat_usage.get("prompt_tokens", 0), chat_usage.get("completion_tokens", 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def message_item(iid: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": iid, "role": "assistant", "status": status,
            "content": [text_part(text)] if status != "in_progress" else []}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(iid: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": iid, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


@dataclass
class ResponseShell:
    """One request's Response object, less its output: ``echo`` holds the request fields it repeats."""

    model: str
    echo: dict[str, Any]
    id: str = field(default_factory=lambda: item_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(self, status: str, output: list[dict[str, Any]], finish_reason: str | None = None,
             chat_usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        body = {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "completed_at": int(time.time()) if status == "completed" else None, "error": error,
                "incomplete_details": incomplete, "model": self.model, "output": output, "usage": usage(chat_usage),
                **DEFAULTS, **self.echo}
        return body


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def response_object(shell: ResponseShell, reply: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` as the Response object."""
    choice = reply["choices"][0]
    message, reason = choice.get("message") or {}, choice.get("finish_reason")
    status = status_of(reason)
    items: list[dict[str, Any]] = []
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        items.append(message_item(item_id("msg"), message.get("content") or "", "completed"))
    for call in calls:
        items.append(call_item(item_id("fc"), call["id"], call["function"]["name"], call["function"]["arguments"],
                               "completed"))
    items[-1]["status"] = status  # what ran out of tokens is the last item
    return shell.body(status, items, reason, reply.get("usage"))


class ResponseEvents:
    """The stream events of one Response, fed chat chunks (see the module docstring)."""

    def __init__(self, shell: ResponseShell):
        self.shell, self.sequence = shell, 0
        self.output: list[dict[str, Any]] = []  # finished items, then the open one (its final form so far)
        self.open: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        return [self.event("response.created", response=self.shell.body("in_progress", [])),
                self.event("response.in_progress", response=self.shell.body("in_progress", []))]

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        choice = (chunk.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        if delta.get("content"):
            if self.open is None or self.open["type"] != "message":
                events += self._close("completed") + self._open_message()
            self.open["content"][0]["text"] += delta["content"]
            events.append(self.event("response.output_text.delta", item_id=self.open["id"], output_index=self.index,
                                     content_index=0, delta=delta["content"], logprobs=[]))
        for part in delta.get("tool_calls") or []:
            function = part.get("function") or {}
            if part.get("id"):
                events += self._close("completed")
                self.open = call_item(item_id("fc"), part["id"], function.get("name", ""), "", "in_progress")
                events.append(self.event("response.output_item.added", output_index=self.index, item=dict(self.open)))
            if function.get("arguments") and self.open is not None and self.open["type"] == "function_call":
                self.open["arguments"] += function["arguments"]
                events.append(self.event("response.function_call_arguments.delta", item_id=self.open["id"],
                                         output_index=self.index, delta=function["arguments"]))
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        return events

    def finish(self) -> list[dict[str, Any]]:
        status = status_of(self.finish_reason)
        events = self._open_message() if self.open is None and not self.output else []  # an empty reply: empty text
        events += self._close(status)
        body = self.shell.body(status, self.output, self.finish_reason, self.usage)
        return events + [self.event(f"response.{status}", response=body)]

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """An error met mid-stream (``error``: OpenAI's error object): ``error``, then ``response.failed``."""
        code = "invalid_prompt" if error.get("type") == "invalid_request_error" else "server_error"
        output = self.output + ([self.open] if self.open is not None else [])
        failed = self.shell.body("failed", output, error={"code": code, "message": error.get("message", "")})
        return [self.event("error", code=error.get("code"), message=error.get("message", ""),
                           param=error.get("param")), self.event("response.failed", response=failed)]

    @property
    def index(self) -> int:
        return len(self.output)

    def _open_message(self) -> list[dict[str, Any]]:
        self.open = message_item(item_id("msg"), "", "in_progress")
        added = self.event("response.output_item.added", output_index=self.index, item=json.loads(json.dumps(
            self.open)))
        self.open["content"] = [text_part("")]
        return [added, self.event("response.content_part.added", item_id=self.open["id"], output_index=self.index,
                                  content_index=0, part=text_part(""))]

    def _close(self, status: str) -> list[dict[str, Any]]:
        """Events that finish the open item, if any; it joins the output with ``status``."""
        item, self.open = self.open, None
        if item is None:
            return []
        index, item["status"] = self.index, status
        if item["type"] == "message":
            part = item["content"][0]
            events = [self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                                 text=part["text"], logprobs=[]),
                      self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                 content_index=0, part=dict(part))]
        else:
            events = [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                 name=item["name"], arguments=item["arguments"])]
        self.output.append(item)
        return events + [self.event("response.output_item.done", output_index=index, item=json.loads(json.dumps(
            item)))]
