"""Anthropic's Messages API request (``POST /v1/messages``, ``POST /v1/messages/count_tokens``) as the
chat-completions request the model runs.

:func:`translate` checks the fields only the Messages API has (``system`` and content blocks, ``tool_use`` and
``tool_result`` blocks, ``tools`` with ``input_schema``, ``tool_choice`` objects, ``output_config.format``,
``stop_sequences``, ``metadata``) and refuses by name every field it does not honour; it builds the equivalent chat
body, which :func:`~chatpack.protocol.chat_request.parse_request` then checks with the rules of
``/v1/chat/completions``. That check's errors name chat fields (``tools[0].function.parameters``,
``messages[3].tool_call_id``, ``response_format``); :func:`renamed` turns them back into the fields the caller sent
(``tools[0].input_schema``, ``messages[1].content[0].tool_use_id``, ``output_config.format``).

The conversation becomes chat turns in :mod:`chatpack.serving.messages.conversation`, the tools and the reply's shape
in :mod:`chatpack.serving.messages.tools`. ``stop_sequences`` are not given to the engine: the route finds them in the
reply itself, so that it can say which one ended it (:class:`~chatpack.serving.messages.serving.StopScanner`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chatpack.protocol.errors import Neutral, RequestError, refuse_unless_neutral
from chatpack.serving.messages.checks import check_cache_control
from chatpack.serving.messages.conversation import conversation, system_text
from chatpack.serving.messages.tools import chat_format, chat_tool_choice, chat_tools
from chatpack.serving.request_checks import fields_of, short, string_at

MAX_STOP_SEQUENCES = 64
MAX_USER_ID = 256
# Fields (and block types) that ask for what this server does not have, refused by name with the reason.
REFUSED = {
    "container": "code-execution containers are not run here (only client tools, which your code runs)",
    "mcp_servers": "MCP servers are not connected from here; run the tools in your client and describe them in "
                   "'tools'",
    "context_management": "conversations are not stored here, so there is no context to edit or compact",
    "diagnostics": "there is no prompt cache here to diagnose",
    "inference_geo": "inference runs on this server only",
}
NEUTRAL = {
    "thinking": Neutral(lambda v: isinstance(v, dict) and v == {"type": "disabled"}, '{"type": "disabled"}',
                        "the served models do not think before answering"),
    "service_tier": Neutral(lambda v: v in ("auto", "standard_only"), '"auto" or "standard_only"',
                            "there is one tier"),
    "speed": Neutral(lambda v: v == "standard", '"standard"', "there is one speed"),
}
CREATE_FIELDS = ("model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
                 "top_k", "metadata", "tools", "tool_choice", "output_config", "cache_control", *NEUTRAL)
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "output_config", "cache_control", *NEUTRAL)
_RENAMES = [(re.compile(p), r) for p, r in (
    (r"^response_format\.json_schema\.schema", "output_config.format.schema"),
    (r"^response_format(\.json_schema)?", "output_config.format"),
    (r"^tools\[(\d+)\]\.function\.parameters", r"tools[\1].input_schema"),
    (r"^tools\[(\d+)\]\.function", r"tools[\1]"),
    (r"^tool_choice\.function\.name", "tool_choice.name"),
    (r"^tool_choice: 'required' needs tools", "tool_choice: type 'any' needs tools"),
    (r"^parallel_tool_calls", "tool_choice.disable_parallel_tool_use"))]
_PARAMS = {"response_format": "output_config", "parallel_tool_calls": "tool_choice"}
_MESSAGE = re.compile(r"^messages(?:\[(\d+)\])?(?=[.:\s])")


@dataclass(frozen=True)
class MessagesRequest:
    """A checked Messages request: ``chat`` is the chat-completions body it becomes, ``sources`` the Messages path
    each chat message came from (``system``, ``messages[2]``, ``messages[3].content[0]``)."""

    chat: dict[str, Any]
    sources: tuple[str, ...]
    stop_sequences: tuple[str, ...] = ()
    max_tokens: int | None = None
    stream: bool = False

    @property
    def structured(self) -> bool:
        """Whether the reply is decoded under ``output_config.format`` (stop sequences do not apply inside it)."""
        return "response_format" in self.chat


def translate(body: Any, counting: bool = False) -> MessagesRequest:
    """Check a ``/v1/messages`` body (``counting``: a ``/v1/messages/count_tokens`` one) and build the chat body it
    asks for (see the module docstring)."""
    if not isinstance(body, dict):
        raise RequestError(None, f"request: expected a JSON object, got {short(body)}")
    body = {k: v for k, v in body.items() if v is not None}
    fields = COUNT_FIELDS if counting else CREATE_FIELDS
    for key in sorted(body):
        if key in REFUSED:
            raise RequestError(key, f"{key}: not supported: {REFUSED[key]}")
        if key not in fields:
            why = " (count_tokens counts the prompt only)" if counting and key in CREATE_FIELDS else ""
            raise RequestError(key, f"{key}: unsupported field{why} (supported: {', '.join(sorted(fields))})")
    refuse_unless_neutral(body, NEUTRAL, short)
    if "model" not in body:
        raise RequestError("model", "model: required (any name: the server answers with the model it serves)")
    chat: dict[str, Any] = {"model": string_at(body["model"], "model", empty=False)}
    stops: tuple[str, ...] = ()
    if not counting:
        chat["max_tokens"] = _max_tokens(body.get("max_tokens"))
        for key, low, high in (("temperature", 0, 1), ("top_p", 0, 1)):
            if key in body:
                chat[key] = _number(body[key], key, low, high)
        if "top_k" in body:
            chat["top_k"] = body["top_k"]  # checked with the chat request
        if "stop_sequences" in body:
            stops = _stop_sequences(body["stop_sequences"])
        if "metadata" in body:
            _metadata(body["metadata"])
        if "stream" in body and not isinstance(body["stream"], bool):
            raise RequestError("stream", f"stream: expected true or false, got {short(body['stream'])}")
    if "cache_control" in body:
        check_cache_control(body["cache_control"], "cache_control")
    messages, sources = [], []
    if "system" in body:
        messages.append({"role": "system", "content": system_text(body["system"])})
        sources.append("system")
    if "messages" not in body:
        raise RequestError("messages", "messages: required (a non-empty list of {role, content} objects)")
    turns, paths = conversation(body["messages"])
    chat["messages"] = messages + turns
    if "tools" in body:
        chat["tools"] = chat_tools(body["tools"])
    if "tool_choice" in body:
        chat["tool_choice"], parallel = chat_tool_choice(body["tool_choice"])
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if "output_config" in body:
        fmt = chat_format(body["output_config"])
        if fmt is not None:
            chat["response_format"] = fmt
    return MessagesRequest(chat, tuple(sources + paths), stops, chat.get("max_tokens"), body.get("stream") is True)


def renamed(param: str | None, message: str, sources: tuple[str, ...]) -> tuple[str | None, str]:
    """A chat-request error as the Messages field it is about (see the module docstring)."""
    match = _MESSAGE.match(message)
    if match:
        index = int(match.group(1)) if match.group(1) is not None else None
        source = sources[index] if index is not None and index < len(sources) else "messages"
        rest = message[match.end():]
        if rest.startswith(".tool_call_id"):
            rest = ".tool_use_id" + rest.removeprefix(".tool_call_id")
        return ("system" if source == "system" else "messages"), source + rest
    for pattern, replacement in _RENAMES:
        message = pattern.sub(replacement, message, count=1)
    return _PARAMS.get(param, param) if param else param, message


# -- the conversation -------------------------------------------------------------------------------------------------


def _max_tokens(value: Any) -> int:
    if value is None:
        raise RequestError("max_tokens", "max_tokens: required (the most tokens the reply may take)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError("max_tokens", f"max_tokens: expected an integer, got {short(value)}")
    if value == 0:
        raise RequestError("max_tokens", "max_tokens: 0 (warming a prompt cache without a reply) is not supported: "
                                         "there is no prompt cache here")
    return value  # bounds: checked with the chat request


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(key, f"{key}: expected a number, got {short(value)}")
    if not low <= value <= high:
        raise RequestError(key, f"{key}: must be between {low} and {high}, got {value!r}")
    return value


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise RequestError("stop_sequences", f"stop_sequences: expected a list of non-empty strings, got "
                                             f"{short(value)}")
    if len(value) > MAX_STOP_SEQUENCES:
        raise RequestError("stop_sequences", f"stop_sequences: at most {MAX_STOP_SEQUENCES}, got {len(value)}")
    return tuple(dict.fromkeys(value))


def _metadata(value: Any) -> None:
    body = fields_of(value, "metadata", ("user_id",), param="metadata")
    user = body.get("user_id")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_ID):
        got = f"{len(user)} characters" if isinstance(user, str) else short(user)
        raise RequestError("metadata", f"metadata.user_id: expected a string of at most {MAX_USER_ID} characters, "
                                       f"got {got}")
