"""OpenAI's Responses API request (``POST /v1/responses``) as the chat-completions request the model runs.

:func:`translate` checks the fields that only the Responses API has (``input`` items, ``instructions``,
``text.format``, flat function ``tools``, ``tool_choice``, and the fields that need server state, refused by name)
and builds the equivalent chat body; :func:`~chatpack.protocol.chat_request.parse_request` then checks that body with
the same rules as ``/v1/chat/completions``. Its errors name chat fields (``response_format.json_schema.schema``,
``messages[2].content``, ``max_tokens``): :func:`renamed` turns them back into the Responses fields the caller sent
(``text.format.schema``, ``input[1].content``, ``max_output_tokens``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chatpack.protocol.errors import STREAM_OPTIONS_ALONE, Neutral, RequestError, refuse_unless_neutral
from chatpack.serving.request_checks import fields_of, short, string_at

ROLES = ("user", "assistant", "system", "developer")
ITEM_TYPES = ("message", "function_call", "function_call_output")
MAX_METADATA = 16  # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512
# Fields that need what this server does not keep (stored responses, conversations, prompt templates, a job queue).
STATEFUL = {
    "previous_response_id": "responses are not stored here; send the whole conversation in 'input' (earlier "
                            "output items can be sent back as input items)",
    "conversation": "conversations are not stored here; send the whole conversation in 'input'",
    "prompt": "stored prompt templates are not kept here; send the text in 'instructions' and 'input'",
    "context_management": "conversations are not stored here, so there is no context to compact",
    "background": "background responses need a stored job to poll",
    "background_options": "background responses are not run here",
    "store": "responses are not stored here (nothing can be retrieved later)",
}
# Fields whose only accepted value is the one that asks for nothing this server lacks (see refuse_unless_neutral).
NEUTRAL = {
    "store": Neutral(lambda v: v is False, "false", STATEFUL["store"]),
    "background": Neutral(lambda v: v is False, "false", STATEFUL["background"]),
    "truncation": Neutral(lambda v: v == "disabled", '"disabled"',
                          "the input is never truncated here; a conversation over the context is refused"),
    "include": Neutral(lambda v: v == [], "[]", "extra output data (logprobs, reasoning, sources) is not produced"),
    "service_tier": Neutral(lambda v: v in ("auto", "default"), '"auto" or "default"', "there is one tier"),
    "top_logprobs": Neutral(lambda v: v == 0, "0", "log-probabilities are not produced by /v1/responses"),
    "reasoning": Neutral(lambda v: v == {}, "{}", "the served models do not reason before answering"),
}
SUPPORTED = ("model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "text", "tools",
             "tool_choice", "parallel_tool_calls", "stream", "stream_options", "metadata", "user",
             "safety_identifier", "prompt_cache_key", *NEUTRAL)
_RENAMES = [(re.compile(p), r) for p, r in (
    (r"^response_format\.json_schema", "text.format"), (r"^response_format", "text.format"),
    (r"^tools\[(\d+)\]\.function", r"tools[\1]"), (r"^tool_choice\.function", "tool_choice"),
    (r"^max_tokens", "max_output_tokens"))]
_PARAMS = {"response_format": "text.format", "messages": "input", "max_tokens": "max_output_tokens"}
_MESSAGE = re.compile(r"^messages(?:\[(\d+)\])?(?=[.:\s])")


@dataclass(frozen=True)
class ResponsesRequest:
    """A checked Responses request: ``chat`` is the chat-completions body it becomes, ``sources`` the Responses path
    each chat message came from (``instructions``, ``input[3]``), ``echo`` what the Response object repeats."""

    chat: dict[str, Any]
    sources: tuple[str, ...]
    echo: dict[str, Any]
    stream: bool


def translate(body: Any) -> ResponsesRequest:
    """Check a ``/v1/responses`` body and build the chat body it asks for (see the module docstring)."""
    if not isinstance(body, dict):
        raise RequestError(None, f"request: expected a JSON object, got {short(body)}")
    body = {k: v for k, v in body.items() if v is not None}
    for key in sorted(body):
        if key not in SUPPORTED and key not in STATEFUL:
            raise RequestError(key, f"{key}: unsupported field (supported: {', '.join(sorted(SUPPORTED))})")
    refuse_unless_neutral(body, NEUTRAL, short)
    for key in body:
        if key in STATEFUL and key not in NEUTRAL:
            raise RequestError(key, f"{key}: not supported: {STATEFUL[key]}")
    if "input" not in body:
        raise RequestError("input", "input: required (a string, or a list of message and function call items)")
    messages, sources = [], []
    if "instructions" in body:
        messages.append({"role": "system", "content": string_at(body["instructions"], "instructions")})
        sources.append("instructions")
    turns, paths = _input(body["input"])
    chat: dict[str, Any] = {"messages": messages + turns}
    for key in ("model", "temperature", "top_p", "parallel_tool_calls", "stream", "user"):
        if key in body:
            chat[key] = body[key]
    if "max_output_tokens" in body:
        chat["max_tokens"] = body["max_output_tokens"]
    echo = {k: body[k] for k in ("instructions", "max_output_tokens", "temperature", "top_p", "parallel_tool_calls",
                                 "user", "safety_identifier", "prompt_cache_key") if k in body}
    for key in ("safety_identifier", "prompt_cache_key"):
        if key in body:
            string_at(body[key], key)
    if "stream_options" in body:
        _options(body["stream_options"])
        if body["stream_options"] is not None and body.get("stream") is not True:
            raise RequestError("stream_options", STREAM_OPTIONS_ALONE)
    echo["metadata"] = _metadata(body.get("metadata", {}))
    if "text" in body:
        fmt = _text_format(body["text"])
        echo["text"] = {"format": fmt or {"type": "text"}}
        if fmt is not None and fmt.get("type") != "text":
            chat["response_format"] = _chat_format(fmt)
    if "tools" in body:
        chat["tools"], echo["tools"] = _tools(body["tools"]), body["tools"]
    if "tool_choice" in body:
        chat["tool_choice"], echo["tool_choice"] = _tool_choice(body["tool_choice"]), body["tool_choice"]
    stream = body.get("stream", False)
    return ResponsesRequest(chat, tuple(sources + paths), echo, stream is True)


def renamed(param: str | None, message: str, sources: tuple[str, ...]) -> tuple[str | None, str]:
    """A chat-request error as the Responses field it is about (see the module docstring)."""
    match = _MESSAGE.match(message)
    if match:
        index = int(match.group(1)) if match.group(1) is not None else None
        source = sources[index] if index is not None and index < len(sources) else "input"
        return ("instructions" if source == "instructions" else "input"), source + message[match.end():]
    for pattern, replacement in _RENAMES:
        message = pattern.sub(replacement, message, count=1)
    return _PARAMS.get(param, param) if param else param, message


def _input(value: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(chat messages, the input path of each) of ``input``: function calls join the assistant turn before them."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}], ["input"]
    if not isinstance(value, list) or not value:
        raise RequestError("input", f"input: expected a string or a non-empty list of items, got {short(value)}")
    messages: list[dict[str, Any]] = []
    paths: list[str] = []
    calls: set[str] = set()
    for i, item in enumerate(value):
        path = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError("input", f"{path}: expected an object (a message or a function call item), got "
                                        f"{short(item)}")
        item = {k: v for k, v in item.items() if v is not None}
        kind = item.get("type", "message")
        if kind == "message":
            _input_fields(item, path, ("type", "role", "content", "id", "status", "phase"), ("role", "content"))
            role = item["role"]
            if role not in ROLES:
                raise RequestError("input", f"{path}.role: {short(role)} is not one of {', '.join(ROLES)}")
            messages.append({"role": role, "content": _content(item["content"], f"{path}.content", role)})
            paths.append(path)
        elif kind == "function_call":
            _input_fields(item, path, ("type", "call_id", "name", "arguments", "id", "status"), ("call_id", "name",
                                                                                          "arguments"))
            call = {"id": string_at(item["call_id"], f"{path}.call_id", empty=False), "type": "function",
                    "function": {"name": string_at(item["name"], f"{path}.name", empty=False),
                                 "arguments": _json_text(item["arguments"], f"{path}.arguments")}}
            calls.add(call["id"])
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                paths.append(path)
        elif kind == "function_call_output":
            _input_fields(item, path, ("type", "call_id", "output", "id", "status"), ("call_id", "output"))
            call_id = string_at(item["call_id"], f"{path}.call_id", empty=False)
            if call_id not in calls:
                raise RequestError("input", f"{path}.call_id: {call_id!r} answers no function_call item before it")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _content(item["output"], f"{path}.output", "tool")})
            paths.append(path)
        else:
            raise RequestError("input", f"{path}.type: {short(kind)} is not supported (supported: "
                                        f"{', '.join(ITEM_TYPES)}; the server keeps no items to reference)")
    return messages, paths


def _content(value: Any, path: str, role: str) -> str:
    """A message's text: a string, or text parts (``input_text``; an assistant's ``output_text``/``refusal`` too)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError("input", f"{path}: expected a string or a list of text parts, got {short(value)}")
    kinds = ("input_text", "output_text", "refusal") if role == "assistant" else ("input_text",)
    texts = []
    for j, part in enumerate(value):
        where = f"{path}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            shown = "required" if isinstance(part, dict) and kind is None else f"{short(kind)} is not supported"
            raise RequestError("input", f"{where}.type: {shown} (supported here: {', '.join(kinds)}; the served "
                                        "models read text only)")
        key = "refusal" if kind == "refusal" else "text"
        _input_fields(part, where, ("type", key, "annotations", "logprobs"), (key,))
        texts.append(string_at(part[key], f"{where}.{key}"))
    return "".join(texts)


def _text_format(value: Any) -> dict[str, Any] | None:
    text = _input_fields(value, "text", ("format",), param="text")
    if "format" not in text:
        return None
    fmt = text["format"]
    if not isinstance(fmt, dict):
        raise RequestError("text.format", f"text.format: expected an object such as {{\"type\": \"json_schema\", "
                                          f"\"name\": ..., \"schema\": {{...}}}}, got {short(fmt)}")
    if fmt.get("type") == "json_schema" and "schema" not in fmt:
        raise RequestError("text.format", "text.format.schema: required with type 'json_schema' (the JSON Schema "
                                          "the reply must follow)")
    return fmt


def _chat_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """``text.format`` as chat's ``response_format`` (json_schema's fields sit one level down there)."""
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    return fmt


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError("tools", f"tools: expected a list of {{\"type\": \"function\", \"name\": ..., "
                                    f"\"parameters\": {{...}}}} objects, got {short(value)}")
    tools = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            shown = "required ('function')" if isinstance(tool, dict) and kind is None else (
                f"{short(kind)} is not supported: only function tools run here (hosted tools such as web_search "
                "or file_search need OpenAI's servers)")
            raise RequestError("tools", f"tools[{i}].type: {shown}" if isinstance(tool, dict) else
                               f"tools[{i}]: expected an object, got {short(tool)}")
        tools.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    return tools


def _tool_choice(value: Any) -> Any:
    if isinstance(value, str):
        return value  # auto / none / required: checked with the chat request
    body = _input_fields(value, "tool_choice", ("type", "name"), ("type",), param="tool_choice")
    if body["type"] != "function":
        raise RequestError("tool_choice", f"tool_choice.type: {short(body['type'])} is not supported (supported: "
                                          "'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...})")
    if "name" not in body:
        raise RequestError("tool_choice", "tool_choice.name: required")
    return {"type": "function", "function": {"name": body["name"]}}


def _metadata(value: Any) -> dict[str, str]:
    body = _input_fields(value, "metadata", None, param="metadata")
    if len(body) > MAX_METADATA:
        raise RequestError("metadata", f"metadata: at most {MAX_METADATA} pairs, got {len(body)}")
    for key, item in body.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise RequestError("metadata", f"metadata.{key[:64]}: keys of at most 64 characters with string values "
                                           f"of at most 512, got {short(item)}")
    return body


def _options(value: Any) -> None:
    options = _input_fields(value, "stream_options", ("include_obfuscation",), param="stream_options")
    if not isinstance(options.get("include_obfuscation", False), bool):
        raise RequestError("stream_options", "stream_options.include_obfuscation: expected true or false")


def _json_text(value: Any, path: str) -> str:
    """A string holding JSON (a function call's arguments), named by ``path`` when it is not."""
    text = string_at(value, path)
    try:
        json.loads(text)
    except ValueError:
        raise RequestError("input", f"{path}: not valid JSON ({short(text)}); send the arguments the call was "
                                    "made with") from None
    return text


def _input_fields(value: Any, path: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = (),
                  param: str = "input") -> dict[str, Any]:
    """:func:`~chatpack.serving.request_checks.fields_of` as the Responses request uses it: named ``input`` unless
    said otherwise, None entries kept (refused unless allowed)."""
    return fields_of(value, path, allowed, required, param, drop_none=False)

