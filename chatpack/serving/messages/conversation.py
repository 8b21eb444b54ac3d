"""A Messages request's conversation (``system`` and ``messages``, their content blocks) as chat turns.

``system`` (a string or text blocks) is the first system turn; a message's text blocks are joined with a newline; a
user message's ``tool_result`` blocks become ``tool`` turns answering the ``tool_use`` blocks (an assistant turn's
``tool_calls``) of an earlier assistant message, ``is_error: true`` shown to the model as a result starting
``Error:``; consecutive text turns of one role are one turn, as the API combines them. Blocks the served models cannot
read (images, documents), thinking blocks and server-tool blocks are refused by name, and so is a conversation that
ends with an assistant turn (prefill).
"""

from __future__ import annotations

import json
from typing import Any

from chatpack.protocol.errors import RequestError
from chatpack.serving.messages.checks import check_cache_control
from chatpack.serving.request_checks import fields_of, short, string_at

ROLES = ("user", "assistant", "system")
BLOCK_JOIN = "\n"  # between the text blocks of one message, and between consecutive text turns of one role
TEXT_ONLY = "the served models read text only"
SERVER_BLOCKS = ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                 "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
                 "tool_search_tool_result", "mcp_tool_use", "mcp_tool_result", "container_upload")


def system_text(value: Any) -> str:
    """``system``: a string, or text blocks joined."""
    return _text_blocks(value, "system", "system", "the system prompt takes text blocks only")


def conversation(value: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(chat messages, the Messages path of each) of ``messages`` (see the module docstring)."""
    if not isinstance(value, list) or not value:
        raise RequestError("messages", f"messages: expected a non-empty list of {{role, content}} objects, got "
                                       f"{short(value)}")
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
        message = fields_of(message, path, ("role", "content"), ("role", "content"), param="messages")
        role = message["role"]
        if role not in ROLES:
            raise RequestError("messages", f"{path}.role: {short(role)} is not one of {', '.join(ROLES)}")
        content = message["content"]
        if isinstance(content, str):
            add({"role": role, "content": content}, path)
            continue
        if not isinstance(content, list) or not content:
            raise RequestError("messages", f"{path}.content: expected a string or a non-empty list of content "
                                           f"blocks, got {short(content)}")
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
        use = fields_of(block, where, ("type", "id", "name", "input", "cache_control", "caller"),
                        ("id", "name", "input"))
        call_id = string_at(use["id"], f"{where}.id", empty=False)
        if call_id in called:
            raise RequestError("messages", f"{where}.id: {call_id!r} is the id of an earlier tool_use block")
        called.add(call_id)
        if not isinstance(use["input"], dict):
            raise RequestError("messages", f"{where}.input: expected an object (the tool's input), got "
                                           f"{short(use['input'])}")
        if "cache_control" in use:
            check_cache_control(use["cache_control"], f"{where}.cache_control")
        if "caller" in use and use["caller"] != {"type": "direct"}:
            raise RequestError("messages", f"{where}.caller: only {{\"type\": \"direct\"}} is accepted (server "
                                           "tools, which call tools from code, do not run here)")
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": string_at(use["name"], f"{where}.name", empty=False),
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
        result = fields_of(block, where, ("type", "tool_use_id", "content", "is_error", "cache_control"),
                           ("tool_use_id",))
        use_id = string_at(result["tool_use_id"], f"{where}.tool_use_id", empty=False)
        if use_id not in called:
            raise RequestError("messages", f"{where}.tool_use_id: {use_id!r} answers no tool_use block of an earlier "
                                           "assistant message")
        if "cache_control" in result:
            check_cache_control(result["cache_control"], f"{where}.cache_control")
        text = _text_blocks(result.get("content", ""), f"{where}.content", "messages",
                            f"a tool result here holds text blocks only ({TEXT_ONLY})")
        error = result.get("is_error", False)
        if not isinstance(error, bool):
            raise RequestError("messages", f"{where}.is_error: expected true or false, got {short(error)}")
        if error:
            text = f"Error: {text}" if text else "Error"
        turns.append(({"role": "tool", "tool_call_id": use_id, "content": text}, where))
    if texts:
        turns.append(({"role": role, "content": BLOCK_JOIN.join(texts)}, path))
    return turns


def _text_blocks(value: Any, path: str, param: str, why: str) -> str:
    """A string, or a list of text blocks joined; any other block refused naming ``path`` and saying ``why``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError(param, f"{path}: expected a string or a list of text blocks, got {short(value)}")
    texts = []
    for k, block in enumerate(value):
        where = f"{path}[{k}]"
        if (block.get("type") if isinstance(block, dict) else None) != "text":
            raise RequestError(param, f"{where}.type: {_kind_shown(block)}; {why}")
        texts.append(_text_block(block, where, param))
    return BLOCK_JOIN.join(texts)


def _block_kind(block: Any, where: str, kinds: tuple[str, ...], role: str) -> str:
    """The type of one content block, refused by name unless it is one of ``kinds``."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind in kinds:
        return kind
    if not isinstance(block, dict):
        raise RequestError("messages", f"{where}: expected a content block object, got {short(block)}")
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
        why = f"{short(kind)} is not supported (here: {', '.join(kinds)})"
    raise RequestError("messages", f"{where}.type: {why}")


def _text_block(block: dict[str, Any], where: str, param: str = "messages") -> str:
    text = fields_of(block, where, ("type", "text", "cache_control", "citations"), ("text",), param=param)
    if text.get("citations"):
        raise RequestError(param, f"{where}.citations: not supported: there are no documents here to cite")
    if "cache_control" in text:
        check_cache_control(text["cache_control"], f"{where}.cache_control")
    return string_at(text["text"], f"{where}.text")


def _kind_shown(block: Any) -> str:
    if not isinstance(block, dict):
        return f"expected a block object, got {short(block)}"
    kind = block.get("type")
    if kind is None:
        return "required"
    return f"{kind!r} blocks are not supported ({TEXT_ONLY})" if kind in ("image", "document", "search_result") \
        else f"{short(kind)} is not supported"
