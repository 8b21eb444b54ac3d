"""How tools and tool turns reach the model: through its chat template where the template takes ``tools``, otherwise
as text every template renders.

A template that mentions ``tools`` gets the tool list (``apply_chat_template(..., tools=...)``) and the turns in the
Hugging Face form (an assistant turn's ``tool_calls`` with ``arguments`` as an object, ``tool`` turns as they are).
Any other template gets plain turns:

- the tools, as a system prompt (:func:`tools_prompt`: the Hermes function-calling prompt with the function list in
  ``<tools>`` and how to call one), added to the conversation's system turn or put first;
- an assistant turn's calls, as the text the model writes under the tool-call constraint
  (``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``), after its content;
- ``tool`` turns, as one user turn per run of them: ``<tool_response>\\n{"name": ..., "content": ...}\\n
  </tool_response>`` per result.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chatpack.engine.guidance import ARGS_OPEN, CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR
from chatpack.protocol.reply_format import ReplyFormat

_TOOLS_VARIABLE = re.compile(r"\btools\b")


def template_takes_tools(model_dir: str | Path) -> bool:
    """Whether the model folder's chat template (``chat_template.jinja``, else ``tokenizer_config.json``) uses
    ``tools``."""
    folder = Path(model_dir)
    template = ""
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    elif (folder / "tokenizer_config.json").is_file():
        found = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template") or ""
        template = found if isinstance(found, str) else json.dumps(found)
    return bool(_TOOLS_VARIABLE.search(template))


def tools_prompt(fmt: ReplyFormat) -> str:
    """The system prompt that describes the tools to a model whose template cannot: the Hermes function-calling
    prompt (the tool list in ``<tools>``, one ``<tool_call>`` block per call), which many small models have seen."""
    listed = "\n".join(json.dumps({"type": "function", "function": {
        "name": t.name, **({"description": t.description} if t.description else {}), "parameters": t.parameters}})
        for t in fmt.tools)
    rule = {"required": "\nYou must call at least one function.", "function": f"\nYou must call {fmt.forced}."}
    return ("You are a function calling AI model. You are provided with function signatures within <tools></tools> "
            "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions "
            f"about what values to plug into functions. Here are the available tools: <tools>\n{listed}\n</tools>\n"
            "For each function call return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags as follows:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</tool_call>'
            + rule.get(fmt.tool_choice, ""))


def call_text(name: str, arguments: str) -> str:
    """One call as the model writes it under the tool-call constraint."""
    return f"{CALL_OPEN}{name}{ARGS_OPEN}{arguments}{CALL_CLOSE}"


def conversation(messages: list[dict[str, Any]], fmt: ReplyFormat | None, native: bool
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(turns for the chat template, tools for it or None). ``native``: the template takes tools itself."""
    offered = fmt is not None and fmt.calls_allowed
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls", ())}
    if native:
        tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                   "parameters": t.parameters}} for t in fmt.tools] if offered else None
        return [_hf_turn(m, names) for m in messages], tools
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            result = "<tool_response>\n" + json.dumps({"name": names.get(message["tool_call_id"], ""),
                                                       "content": message["content"]}) + "\n</tool_response>"
            if turns and turns[-1].get("tool_results"):
                turns[-1]["content"] += "\n" + result
            else:
                turns.append({"role": "user", "content": result, "tool_results": True})
        elif message.get("tool_calls"):
            calls = CALL_SEPARATOR.join(call_text(c["function"]["name"], _compact(c["function"]["arguments"]))
                                        for c in message["tool_calls"])
            turns.append({"role": "assistant", "content": "\n".join(filter(None, (message["content"], calls)))})
        else:
            turns.append({"role": message["role"], "content": message["content"]})
    turns = [{"role": t["role"], "content": t["content"]} for t in turns]
    if offered:
        prompt = tools_prompt(fmt)
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{prompt}"}
        else:
            turns.insert(0, {"role": "system", "content": prompt})
    return turns, None


def _hf_turn(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    if message["role"] == "tool":
        return {**message, "name": names.get(message["tool_call_id"], "")}
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {"name": c["function"]["name"], "arguments": _parsed(c["function"]["arguments"])}}
             for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _compact(arguments: str) -> str:
    """Arguments in the constraint's JSON style (one line, ", " and ": "), or as given when they are not JSON."""
    parsed = _parsed(arguments)
    return arguments if parsed is arguments else json.dumps(parsed, ensure_ascii=False)
