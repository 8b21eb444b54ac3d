"""Anthropic's Messages API request (``POST /v1/messages``, ``POST /v1/messages/count_tokens``) as the
chat-completions request the model runs.

:func:`translate` checks the fields only the Messages API has (``system`` and content blocks, ``tool_use`` and
``tool_result`` blocks, ``tools`` with ``input_schema``, ``tool_choice`` objects, ``output_config.format``,
``stop_sequences``, ``metadata``) and refuses by name every field it does not honour; it builds the equivalent chat
body, which :func:`~chatpack.protocol.chat_request.parse_request` then checks with the rules of
``/v1/chat/completions``. That check's errors name chat fields (``tools[0].function.parameters``,
``messages[3].tool_call_id``, ``response_format``); :func:`renamed` turns them back into the fields the caller sent
(``tools[0].input_schema``, ``messages[1].content[0].tool_use_id``, ``output_config.format``).

How the conversation becomes chat turns: ``system`` (a string or text blocks) is the first system turn; a message's
text blocks are joined with a newline; a user message's ``tool_result`` blocks become ``tool`` turns answering the
``tool_use`` blocks (an assistant turn's ``tool_calls``) of an earlier assistant message, ``is_error: true`` shown to
the model as a result starting ``Error:``; consecutive text turns of one role are one turn, as the API combines them.
``stop_sequences`` are not given to the engine: the route finds them in the reply itself, so that it can say which one
ended it (:class:`~chatpack.serving.messages.serving.StopScanner`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chatpack.protocol.errors import Neutral, RequestError, refuse_unless_neutral

ROLES = ("user", "assistant", "system")
MAX_STOP_SEQUENCES = 64
MAX_USER_ID = 256
BLOCK_JOIN = "\n"  # between the text blocks of one message, and between consecutive text turns of one role
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
TEXT_ONLY = "the served models read text only"
SERVER_BLOCKS = ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                 "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
                 "tool_search_tool_result", "mcp_tool_use", "mcp_tool_result", "container_upload")
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
        raise RequestError(None, f"request: expected a JSON object, got {_shown(body)}")
    body = {k: v for k, v in body.items() if v is not None}
    fields = COUNT_FIELDS if counting else CREATE_FIELDS
    for key in sorted(body):
        if key in REFUSED:
            raise RequestError(key, f"{key}: not supported: {REFUSED[key]}")
        if key not in fields:
            why = " (count_tokens counts the prompt only)" if counting and key in CREATE_FIELDS else ""
            raise RequestError(key, f"{key}: unsupported field{why} (supported: {', '.join(sorted(fields))})")
    refuse_unless_neutral(body, NEUTRAL, _shown)
    if "model" not in body:
        raise RequestError("model", "model: required (any name: the server answers with the model it serves)")
    chat: dict[str, Any] = {"model": _text(body["model"], "model", empty=False)}
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
            raise RequestError("stream", f"stream: expected true or false, got {_shown(body['stream'])}")
    if "cache_control" in body:
        _cache_control(body["cache_control"], "cache_control")
    messages, sources = [], []
    if "system" in body:
        messages.append({"role": "system", "content": _system(body["system"])})
        sources.append("system")
    if "messages" not in body:
        raise RequestError("messages", "messages: required (a non-empty list of {role, content} objects)")
    turns, paths = _messages(body["messages"])
    chat["messages"] = messages + turns
    if "tools" in body:
        chat["tools"] = _tools(body["tools"])
    if "tool_choice" in body:
        chat["tool_choice"], parallel = _tool_choice(body["tool_choice"])
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if "output_config" in body:
        fmt = _output_config(body["output_config"])
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
def _system(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError("system", f"system: expected a string or a list of text blocks, got {_shown(value)}")
    texts = []
    for j, block in enumerate(value):
        where = f"system[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text":
            raise RequestError("system", f"{where}.type: {_kind_shown(block)}; the system prompt takes text blocks "
                                         "only")
        texts.append(_text_block(block, where, "system"))
    return BLOCK_JOIN.join(texts)


def _messages(value: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(chat messages, the Messages path of each) of ``messages`` (see the module docstring)."""
    if not isinstance(value, list) or not value:
        raise RequestError("messages", f"messages: expected a non-empty list of {{role, content}} objects, got "
                                       f"{_shown(value)}")
    turns: list[dict[str, Any]] = []
    paths: list[str] = []
    called: set[str] = set()

    def add(turn: dict[str, Any], path: str) -> None:
        last = turns[-1] if turns else None
        plain = set(turn) == {"role", "content"} and turn["role"] != "tool"
        if last is not None and plain and set(last) == {"role", "content"} and last["role"] == turn["role"]:
            last["content"] += BLOCK_JOIN + turn["content"]  # the API combines consecutive turns of one role
            return
        turns.append(turn)
        paths.append(path)

    for i, message in enumerate(value):
        path = f"messages[{i}]"
        message = _keys(message, path, ("role", "content"), ("role", "content"), param="messages")
        role = message["role"]
        if role not in ROLES:
            raise RequestError("messages", f"{path}.role: {_shown(role)} is not one of {', '.join(ROLES)}")
        content = message["content"]
        if isinstance(content, str):
            add({"role": role, "content": content}, path)
            continue
        if not isinstance(content, list) or not content:
            raise RequestError("messages", f"{path}.content: expected a string or a non-empty list of content "
                                           f"blocks, got {_shown(content)}")
        if role == "assistant":
            add(_assistant(content, f"{path}.content", called), path)
        else:
            for turn, where in _user(content, f"{path}.content", role, called):
                add(turn, where if turn["role"] == "tool" else path)
    if value[-1].get("role") == "assistant":
        raise RequestError("messages", f"messages[{len(value) - 1}]: the conversation ends with an assistant turn "
                                       "(prefill: continuing a reply from given text), which is not supported here; "
                                       "end it with a user turn")
    return turns, paths


def _assistant(blocks: list[Any], path: str, called: set[str]) -> dict[str, Any]:
    """One assistant turn: its text blocks as ``content``, its ``tool_use`` blocks as ``tool_calls``."""
    texts, calls = [], []
    for j, block in enumerate(blocks):
        where = f"{path}[{j}]"
        kind = _block_kind(block, where, ("text", "tool_use"), "assistant")
        if kind == "text":
            texts.append(_text_block(block, where))
            continue
        use = _keys(block, where, ("type", "id", "name", "input", "cache_control", "caller"),
                    ("id", "name", "input"))
        call_id = _text(use["id"], f"{where}.id", empty=False)
        if call_id in called:
            raise RequestError("messages", f"{where}.id: {call_id!r} is the id of an earlier tool_use block")
        called.add(call_id)
        if not isinstance(use["input"], dict):
            raise RequestError("messages", f"{where}.input: expected an object (the tool's input), got "
                                           f"{_shown(use['input'])}")
        if "cache_control" in use:
            _cache_control(use["cache_control"], f"{where}.cache_control")
        if "caller" in use and use["caller"] != {"type": "direct"}:
            raise RequestError("messages", f"{where}.caller: only {{\"type\": \"direct\"}} is accepted (server "
                                           "tools, which call tools from code, do not run here)")
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": _text(use["name"], f"{where}.name", empty=False),
                                   "arguments": json.dumps(use["input"])}})
    turn: dict[str, Any] = {"role": "assistant", "content": BLOCK_JOIN.join(texts) if texts or not calls else None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _user(blocks: list[Any], path: str, role: str, called: set[str]) -> list[tuple[dict[str, Any], str]]:
    """A user (or system) message's turns, in order: its runs of text blocks as ``role`` turns, each ``tool_result``
    block as a ``tool`` turn; each with the path it came from."""
    turns: list[tuple[dict[str, Any], str]] = []
    texts: list[str] = []
    kinds = ("text", "tool_result") if role == "user" else ("text",)
    for j, block in enumerate(blocks):
        where = f"{path}[{j}]"
        kind = _block_kind(block, where, kinds, role)
        if kind == "text":
            texts.append(_text_block(block, where))
            continue
        if texts:
            turns.append(({"role": role, "content": BLOCK_JOIN.join(texts)}, path))
            texts = []
        result = _keys(block, where, ("type", "tool_use_id", "content", "is_error", "cache_control"),
                       ("tool_use_id",))
        use_id = _text(result["tool_use_id"], f"{where}.tool_use_id", empty=False)
        if use_id not in called:
            raise RequestError("messages", f"{where}.tool_use_id: {use_id!r} answers no tool_use block of an earlier "
                                           "assistant message")
        if "cache_control" in result:
            _cache_control(result["cache_control"], f"{where}.cache_control")
        text = _result_content(result.get("content", ""), f"{where}.content")
        error = result.get("is_error", False)
        if not isinstance(error, bool):
            raise RequestError("messages", f"{where}.is_error: expected true or false, got {_shown(error)}")
        if error:
            text = f"Error: {text}" if text else "Error"
        turns.append(({"role": "tool", "tool_call_id": use_id, "content": text}, where))
    if texts:
        turns.append(({"role": role, "content": BLOCK_JOIN.join(texts)}, path))
    return turns


def _result_content(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError("messages", f"{path}: expected a string or a list of text blocks, got {_shown(value)}")
    texts = []
    for k, block in enumerate(value):
        where = f"{path}[{k}]"
        if (block.get("type") if isinstance(block, dict) else None) != "text":
            raise RequestError("messages", f"{where}.type: {_kind_shown(block)}; a tool result here holds text "
                                           f"blocks only ({TEXT_ONLY})")
        texts.append(_text_block(block, where))
    return BLOCK_JOIN.join(texts)


def _block_kind(block: Any, where: str, kinds: tuple[str, ...], role: str) -> str:
    """The type of one content block, refused by name unless it is one of ``kinds``."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind in kinds:
        return kind
    if not isinstance(block, dict):
        raise RequestError("messages", f"{where}: expected a content block object, got {_shown(block)}")
    if kind is None:
        why = f"required (here: {', '.join(kinds)})"
    elif kind in ("image", "document", "search_result"):
        why = f"{kind!r} blocks are not supported: {TEXT_ONLY}"
    elif kind in ("thinking", "redacted_thinking"):
        why = f"{kind!r} blocks are not supported: the served models do not think; send the turn without them"
    elif kind in SERVER_BLOCKS:
        why = f"{kind!r} blocks are not supported: server tools do not run here"
    elif kind == "tool_use":
        why = "'tool_use' blocks belong in assistant messages"
    elif kind == "tool_result":
        why = "'tool_result' blocks belong in user messages"
    else:
        why = f"{_shown(kind)} is not supported (here: {', '.join(kinds)})"
    raise RequestError("messages", f"{where}.type: {why}")


def _text_block(block: dict[str, Any], where: str, param: str = "messages") -> str:
    text = _keys(block, where, ("type", "text", "cache_control", "citations"), ("text",), param=param)
    if text.get("citations"):
        raise RequestError(param, f"{where}.citations: not supported: there are no documents here to cite")
    if "cache_control" in text:
        _cache_control(text["cache_control"], f"{where}.cache_control")
    return _text(text["text"], f"{where}.text")


# -- tools and the reply's shape --------------------------------------------------------------------------------------
def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError("tools", f"tools: expected a list of {{\"name\": ..., \"input_schema\": {{...}}}} objects, "
                                    f"got {_shown(value)}")
    tools = []
    for i, tool in enumerate(value):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise RequestError("tools", f"{path}: expected an object, got {_shown(tool)}")
        tool = {k: v for k, v in tool.items() if v is not None}
        kind = tool.get("type", "custom")
        if kind != "custom":
            raise RequestError("tools", f"{path}.type: {_shown(kind)} is not supported: only client tools (type "
                                        "'custom' or none: name, description, input_schema) run here; server tools "
                                        "run on Anthropic's servers")
        tool = _keys(tool, path, ("type", "name", "description", "input_schema", "cache_control", "strict",
                                  "input_examples", "defer_loading", "allowed_callers", "eager_input_streaming"),
                     ("name", "input_schema"), param="tools")
        if tool.get("input_examples"):
            raise RequestError("tools", f"{path}.input_examples: not supported: examples are not shown to the model "
                                        "here; describe the input in 'description'")
        if tool.get("defer_loading", False) is not False:
            raise RequestError("tools", f"{path}.defer_loading: only false is accepted (there is no tool search "
                                        "here: every tool is in the prompt)")
        if tool.get("allowed_callers", ["direct"]) != ["direct"]:
            raise RequestError("tools", f"{path}.allowed_callers: only [\"direct\"] is accepted (code execution "
                                        "does not run here)")
        if tool.get("eager_input_streaming", True) is not True:
            raise RequestError("tools", f"{path}.eager_input_streaming: only true is accepted (tool input always "
                                        "streams as it is generated here)")
        if "cache_control" in tool:
            _cache_control(tool["cache_control"], f"{path}.cache_control")
        function = {"name": tool["name"], "parameters": tool["input_schema"]}
        for key in ("description", "strict"):
            if key in tool:
                function[key] = tool[key]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> tuple[Any, bool | None]:
    """(chat ``tool_choice``, chat ``parallel_tool_calls`` or None) of a Messages ``tool_choice``."""
    kinds = {"auto": "auto", "any": "required", "tool": "function", "none": "none"}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in kinds:
        shown = "required" if isinstance(value, dict) and kind is None else f"{_shown(kind)} is not supported"
        raise RequestError("tool_choice", f"tool_choice.type: {shown} (one of auto, any, tool, none)" if isinstance(
            value, dict) else f"tool_choice: expected an object such as {{\"type\": \"auto\"}}, got {_shown(value)}")
    allowed = {"none": ("type",), "tool": ("type", "name", "disable_parallel_tool_use")}.get(
        kind, ("type", "disable_parallel_tool_use"))
    body = _keys(value, "tool_choice", allowed, ("name",) if kind == "tool" else (), param="tool_choice")
    parallel = None
    if "disable_parallel_tool_use" in body:
        if not isinstance(body["disable_parallel_tool_use"], bool):
            raise RequestError("tool_choice", "tool_choice.disable_parallel_tool_use: expected true or false, got "
                                              f"{_shown(body['disable_parallel_tool_use'])}")
        parallel = not body["disable_parallel_tool_use"]
    if kind == "tool":
        return {"type": "function", "function": {"name": _text(body["name"], "tool_choice.name", empty=False)}}, \
            parallel
    return kinds[kind], parallel


def _output_config(value: Any) -> dict[str, Any] | None:
    config = _keys(value, "output_config", ("format", "effort"), param="output_config")
    if "effort" in config:
        raise RequestError("output_config", f"output_config.effort: not supported, got {_shown(config['effort'])} "
                                            "(the served models answer with one effort; leave it out)")
    if "format" not in config:
        return None
    fmt = _keys(config["format"], "output_config.format", ("type", "schema"), ("type", "schema"),
                param="output_config")
    if fmt["type"] != "json_schema":
        raise RequestError("output_config", f"output_config.format.type: {_shown(fmt['type'])} is not "
                                            "'json_schema'")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


# -- options ----------------------------------------------------------------------------------------------------------
def _max_tokens(value: Any) -> int:
    if value is None:
        raise RequestError("max_tokens", "max_tokens: required (the most tokens the reply may take)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError("max_tokens", f"max_tokens: expected an integer, got {_shown(value)}")
    if value == 0:
        raise RequestError("max_tokens", "max_tokens: 0 (warming a prompt cache without a reply) is not supported: "
                                         "there is no prompt cache here")
    return value  # bounds: checked with the chat request


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(key, f"{key}: expected a number, got {_shown(value)}")
    if not low <= value <= high:
        raise RequestError(key, f"{key}: must be between {low} and {high}, got {value!r}")
    return value


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise RequestError("stop_sequences", f"stop_sequences: expected a list of non-empty strings, got "
                                             f"{_shown(value)}")
    if len(value) > MAX_STOP_SEQUENCES:
        raise RequestError("stop_sequences", f"stop_sequences: at most {MAX_STOP_SEQUENCES}, got {len(value)}")
    return tuple(dict.fromkeys(value))


def _metadata(value: Any) -> None:
    body = _keys(value, "metadata", ("user_id",), param="metadata")
    user = body.get("user_id")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_ID):
        got = f"{len(user)} characters" if isinstance(user, str) else _shown(user)
        raise RequestError("metadata", f"metadata.user_id: expected a string of at most {MAX_USER_ID} characters, "
                                       f"got {got}")


def _cache_control(value: Any, path: str) -> None:
    """A prompt-caching breakpoint: accepted (there is no prompt cache here to write), if it is well formed."""
    param = path.split("[")[0].split(".")[0]
    body = _keys(value, path, ("type", "ttl"), ("type",), param=param)
    if body["type"] != "ephemeral":
        raise RequestError(param, f"{path}.type: {_shown(body['type'])} is not 'ephemeral'")
    if body.get("ttl", "5m") not in ("5m", "1h"):
        raise RequestError(param, f"{path}.ttl: {_shown(body['ttl'])} is not '5m' or '1h'")


# -- helpers ----------------------------------------------------------------------------------------------------------
def _keys(value: Any, path: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = (),
          param: str = "messages") -> dict[str, Any]:
    """``value`` as an object (None entries dropped) with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(value, dict):
        raise RequestError(param, f"{path}: expected an object, got {_shown(value)}")
    value = {k: v for k, v in value.items() if v is not None}
    for key in value:
        if allowed is not None and key not in allowed:
            raise RequestError(param, f"{path}.{key}: unsupported field (supported: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise RequestError(param, f"{path}.{key}: required")
    return value


def _text(value: Any, path: str, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        param = path.split("[")[0].split(".")[0]
        raise RequestError(param, f"{path}: expected a {'' if empty else 'non-empty '}string, got {_shown(value)}")
    return value


def _kind_shown(block: Any) -> str:
    if not isinstance(block, dict):
        return f"expected a block object, got {_shown(block)}"
    kind = block.get("type")
    if kind is None:
        return "required"
    return f"{kind!r} blocks are not supported ({TEXT_ONLY})" if kind in ("image", "document", "search_result") \
        else f"{_shown(kind)} is not supported"


def _shown(value: Any) -> str:
    """A short value as written (scalars as Python shows them, small lists and objects as JSON), else its type."""
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else ("null" if value is None else f"a {type(value).__name__}")
