"""A Messages request's ``tools``, ``tool_choice`` and ``output_config`` as the chat request's ``tools``,
``tool_choice``/``parallel_tool_calls`` and ``response_format``: client tools only (server tools, and the tool fields
this server does not honour, refused by name), ``input_schema`` as the function's ``parameters``."""

from __future__ import annotations

from typing import Any

from chatpack.protocol.errors import RequestError
from chatpack.serving.messages.checks import check_cache_control
from chatpack.serving.request_checks import fields_of, short, string_at


def chat_tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError("tools", f"tools: expected a list of {{\"name\": ..., \"input_schema\": {{...}}}} objects, "
                                    f"got {short(value)}")
    tools = []
    for i, tool in enumerate(value):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise RequestError("tools", f"{path}: expected an object, got {short(tool)}")
        tool = {k: v for k, v in tool.items() if v is not None}
        kind = tool.get("type", "custom")
        if kind != "custom":
            raise RequestError("tools", f"{path}.type: {short(kind)} is not supported: only client tools (type "
                                        "'custom' or none: name, description, input_schema) run here; server tools "
                                        "run on Anthropic's servers")
        tool = fields_of(tool, path, ("type", "name", "description", "input_schema", "cache_control", "strict",
                                       "input_examples", "defer_loading", "allowed_callers",
                                       "eager_input_streaming"),
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
            check_cache_control(tool["cache_control"], f"{path}.cache_control")
        function = {"name": tool["name"], "parameters": tool["input_schema"]}
        for key in ("description", "strict"):
            if key in tool:
                function[key] = tool[key]
        tools.append({"type": "function", "function": function})
    return tools


def chat_tool_choice(value: Any) -> tuple[Any, bool | None]:
    """(chat ``tool_choice``, chat ``parallel_tool_calls`` or None) of a Messages ``tool_choice``."""
    kinds = {"auto": "auto", "any": "required", "tool": "function", "none": "none"}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in kinds:
        shown = "required" if isinstance(value, dict) and kind is None else f"{short(kind)} is not supported"
        raise RequestError("tool_choice", f"tool_choice.type: {shown} (one of auto, any, tool, none)" if isinstance(
            value, dict) else f"tool_choice: expected an object such as {{\"type\": \"auto\"}}, got {short(value)}")
    allowed = {"none": ("type",), "tool": ("type", "name", "disable_parallel_tool_use")}.get(
        kind, ("type", "disable_parallel_tool_use"))
    body = fields_of(value, "tool_choice", allowed, ("name",) if kind == "tool" else (), param="tool_choice")
    parallel = None
    if "disable_parallel_tool_use" in body:
        if not isinstance(body["disable_parallel_tool_use"], bool):
            raise RequestError("tool_choice", "tool_choice.disable_parallel_tool_use: expected true or false, got "
                                              f"{short(body['disable_parallel_tool_use'])}")
        parallel = not body["disable_parallel_tool_use"]
    if kind == "tool":
        return {"type": "function", "function": {"name": string_at(body["name"], "tool_choice.name", empty=False)}}, \
            parallel
    return kinds[kind], parallel


def chat_format(value: Any) -> dict[str, Any] | None:
    config = fields_of(value, "output_config", ("format", "effort"), param="output_config")
    if "effort" in config:
        raise RequestError("output_config", f"output_config.effort: not supported, got {short(config['effort'])} "
                                            "(the served models answer with one effort; leave it out)")
    if "format" not in config:
        return None
    fmt = fields_of(config["format"], "output_config.format", ("type", "schema"), ("type", "schema"),
                    param="output_config")
    if fmt["type"] != "json_schema":
        raise RequestError("output_config", f"output_config.format.type: {short(fmt['type'])} is not "
                                            "'json_schema'")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
