"""What shape a reply must take: OpenAI's ``response_format``, ``tools``, ``tool_choice`` and ``parallel_tool_calls``,
checked field by field into a :class:`ReplyFormat`; and :class:`Guidance`, the constraint the engine decodes under.

Every refusal is a :class:`~chatpack.protocol.errors.RequestError` naming the field with its path
(``tools[1].function.parameters: must be a JSON schema of type 'object', got 'string'``). Sizes are bounded here
(:data:`MAX_TOOLS`, :data:`MAX_CONSTRAINT_CHARS`) so that compiling the constraint stays cheap; whether a schema can
be enforced at all is decided when it is compiled (LLGuidance inside onnxruntime-genai), which reports errors as this
module's fields too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from chatpack.protocol.errors import RequestError

MAX_TOOLS = 64
MAX_CONSTRAINT_CHARS = 65_536  # response_format schema/pattern plus all tools, as JSON text
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
FORMAT_TYPES = ("text", "json_object", "json_schema")
EXTENSION_TYPES = ("regex", "grammar")  # chatpack's own: a regular expression or a Lark grammar (LLGuidance dialect)
CHOICES = ("none", "auto", "required")
FIELDS = ("response_format", "tools", "tool_choice", "parallel_tool_calls")
# Model metadata that says a logged model implements FIELDS (and tool messages): the server refuses them otherwise.
STRUCTURED_OUTPUTS_KEY = "chatpack_structured_outputs"


@dataclass(frozen=True)
class Guidance:
    """A decoding constraint: ``kind`` is ``json_schema``, ``regex`` or ``lark_grammar`` (onnxruntime-genai's
    ``set_guidance`` kinds) and ``text`` its source. ``max_calls`` > 0 when the reply may be tool calls (at most that
    many); ``free_text`` when it may instead be plain text (where ``stop`` sequences still apply)."""

    kind: str
    text: str
    max_calls: int = 0
    free_text: bool = False


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ReplyFormat:
    """The checked reply-shape fields of one request. ``fields`` holds them as the caller sent them (what the server
    forwards to the model)."""

    kind: str = "text"  # one of FORMAT_TYPES + EXTENSION_TYPES
    schema: dict[str, Any] | None = None  # json_schema (json_object: None)
    pattern: str | None = None  # regex / grammar source
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"  # auto | none | required | function (then ``forced`` names it)
    forced: str | None = None
    parallel: bool = True
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def calls_allowed(self) -> bool:
        """Whether the reply may be tool calls (tools given and ``tool_choice`` is not ``none``)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def constrained(self) -> bool:
        return self.kind != "text" or self.calls_allowed


def demanded_field(reply_format: ReplyFormat | None, messages: list[dict[str, Any]] | None) -> str | None:
    """The first field of a request that only a model implementing :data:`FIELDS` can answer (``messages`` when the
    conversation has tool turns), or None. ``tool_choice``/``parallel_tool_calls`` without tools and a ``text``
    ``response_format`` ask for nothing special."""
    if reply_format is not None and reply_format.kind != "text":
        return "response_format"
    if reply_format is not None and reply_format.tools:
        return "tools"
    if any(m.get("tool_calls") or m["role"] == "tool" for m in messages or ()):
        return "messages"
    return None


def read_reply_format(response_format: Any, tools: Any, tool_choice: Any, parallel: Any) -> ReplyFormat | None:
    """The request's reply shape, or None when it sets none of the fields (plain text, no tools)."""
    given = {k: v for k, v in zip(FIELDS, (response_format, tools, tool_choice, parallel)) if v is not None}
    if not given:
        return None
    kind, schema, pattern = _response_format(response_format) if response_format is not None else ("text", None, None)
    specs = _tools(tools) if tools else ()
    choice, forced = _tool_choice(tool_choice, specs)
    fmt = ReplyFormat(kind, schema, pattern, specs, choice, forced, parallel is not False, given)
    size = sum(len(json.dumps(given[k])) for k in ("response_format", "tools") if k in given)
    if size > MAX_CONSTRAINT_CHARS:
        param = "tools" if "tools" in given else "response_format"
        raise RequestError(param, f"{param}: the schemas and tools of one request may take at most "
                                  f"{MAX_CONSTRAINT_CHARS} characters of JSON, got {size}")
    if kind in EXTENSION_TYPES and fmt.calls_allowed:
        raise RequestError("response_format", f"response_format: type '{kind}' cannot be combined with tools "
                                              "(use json_schema, or tool_choice 'none')")
    return fmt


def _keys(value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``value`` as an object with only ``allowed`` keys and every ``required`` one (None counts as absent)."""
    param = path.split(".")[0].split("[")[0]
    if not isinstance(value, dict):
        raise RequestError(param, f"{path}: expected an object, got {_shown(value)}")
    value = {k: v for k, v in value.items() if v is not None}
    for key in value:
        if key not in allowed:
            raise RequestError(param, f"{path}.{key}: unsupported field (supported: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise RequestError(param, f"{path}.{key}: required")
    return value


def _string(value: Any, path: str, pattern: re.Pattern | None = None) -> str:
    param = path.split(".")[0].split("[")[0]
    if not isinstance(value, str) or not value:
        raise RequestError(param, f"{path}: expected a non-empty string, got {_shown(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise RequestError(param, f"{path}: {value!r} is not a valid name (1-64 letters, digits, '_' or '-')")
    return value


def _response_format(value: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    """(kind, schema, pattern) of ``response_format``."""
    kinds = FORMAT_TYPES + EXTENSION_TYPES
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(value, dict) and kind not in kinds:
        choices = f"{', '.join(FORMAT_TYPES)} (chatpack extensions: {', '.join(EXTENSION_TYPES)})"
        shown = f"required (one of {choices})" if kind is None else f"{_shown(kind)} is not one of {choices}"
        raise RequestError("response_format", f"response_format.type: {shown}")
    extra = {"json_schema": ("json_schema",), "regex": ("regex",), "grammar": ("grammar",)}.get(str(kind), ())
    body = _keys(value, "response_format", ("type", *extra), extra)
    if kind == "json_schema":
        spec = _keys(body["json_schema"], "response_format.json_schema", ("name", "description", "schema", "strict"),
                     ("name",))
        _string(spec["name"], "response_format.json_schema.name", NAME)
        if "description" in spec:
            _string(spec["description"], "response_format.json_schema.description")
        if "strict" in spec and not isinstance(spec["strict"], bool):
            raise RequestError("response_format", "response_format.json_schema.strict: expected true or false, got "
                                                  f"{_shown(spec['strict'])}")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise RequestError("response_format", "response_format.json_schema.schema: expected a JSON schema "
                                                  f"object, got {_shown(schema)}")
        return kind, schema, None
    if kind in EXTENSION_TYPES:
        return kind, None, _string(body[kind], f"response_format.{kind}")
    return kind, None, None


def _tools(value: Any) -> tuple[ToolSpec, ...]:
    if not isinstance(value, list):
        raise RequestError("tools", f"tools: expected a list of {{\"type\": \"function\", \"function\": {{...}}}} "
                                    f"objects, got {_shown(value)}")
    if len(value) > MAX_TOOLS:
        raise RequestError("tools", f"tools: at most {MAX_TOOLS} tools, got {len(value)}")
    specs: list[ToolSpec] = []
    for i, tool in enumerate(value):
        path = f"tools[{i}]"
        body = _keys(tool, path, ("type", "function"), ("type", "function"))
        if body["type"] != "function":
            raise RequestError("tools", f"{path}.type: {_shown(body['type'])} is not 'function'")
        function = _keys(body["function"], f"{path}.function", ("name", "description", "parameters", "strict"),
                         ("name",))
        name = _string(function["name"], f"{path}.function.name", NAME)
        if name in [s.name for s in specs]:
            first = [s.name for s in specs].index(name)
            raise RequestError("tools", f"{path}.function.name: {name!r} is already the name of tools[{first}]")
        if "description" in function and not isinstance(function["description"], str):
            raise RequestError("tools", f"{path}.function.description: expected a string, got "
                                        f"{_shown(function['description'])}")
        if "strict" in function and not isinstance(function["strict"], bool):
            raise RequestError("tools", f"{path}.function.strict: expected true or false, got "
                                        f"{_shown(function['strict'])}")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            got = parameters.get("type") if isinstance(parameters, dict) else parameters
            raise RequestError("tools", f"{path}.function.parameters: must be a JSON schema of type 'object' "
                                        f"(arguments are a JSON object), got {_shown(got)}")
        specs.append(ToolSpec(name, function.get("description"), {"type": "object", **parameters}))
    return tuple(specs)


def _tool_choice(value: Any, tools: tuple[ToolSpec, ...]) -> tuple[str, str | None]:
    """(choice, forced function name) of ``tool_choice``; the default is ``auto``."""
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in CHOICES:
            raise RequestError("tool_choice", f"tool_choice: {value!r} is not one of {', '.join(CHOICES)} "
                                              "or {\"type\": \"function\", \"function\": {\"name\": ...}}")
        if value == "required" and not tools:
            raise RequestError("tool_choice", "tool_choice: 'required' needs tools")
        return value, None
    body = _keys(value, "tool_choice", ("type", "function"), ("type", "function"))
    if body["type"] != "function":
        raise RequestError("tool_choice", f"tool_choice.type: {_shown(body['type'])} is not 'function'")
    name = _string(_keys(body["function"], "tool_choice.function", ("name",), ("name",))["name"],
                   "tool_choice.function.name")
    if name not in [t.name for t in tools]:
        known = ", ".join(t.name for t in tools) or "none: the request has no tools"
        raise RequestError("tool_choice", f"tool_choice.function.name: {name!r} is not one of the tools ({known})")
    return "function", name


def _shown(value: Any) -> str:
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    return "null" if value is None else f"a {type(value).__name__}"
