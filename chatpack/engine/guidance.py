"""A request's reply shape as an LLGuidance constraint (onnxruntime-genai ``GeneratorParams.set_guidance``).

- ``response_format`` ``json_object`` / ``json_schema``: a ``json_schema`` constraint; ``regex`` / ``grammar`` (chatpack
  extensions) pass through as ``regex`` / ``lark_grammar``.
- tools (``tool_choice`` not ``none``): a Lark grammar whose ``start`` is "the reply or tool calls" (``auto``), "tool
  calls" (``required``) or "one call of that function" (a named function). A call is written

      <tool_call>
      {"name": "<function name>", "arguments": <a JSON object valid against its parameters>}
      </tool_call>

  with the name and the JSON keys' order fixed by the grammar, so :mod:`chatpack.engine.tool_calls` can read it as it
  streams. Parallel calls are separated by one newline. The free-text reply of ``auto`` is any text that does not
  begin with ``<tool_call>``.

JSON is written in one line with ", " and ": " separators (LLGuidance's ``x-guidance`` options), so a small model
cannot wander off into endless whitespace. A constraint that does not compile raises :class:`GuidanceError`;
:func:`blame` finds the request field it came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chatpack.protocol.reply_format import Guidance, ReplyFormat

CALL_OPEN = '<tool_call>\n{"name": "'
ARGS_OPEN = '", "arguments": '
CALL_CLOSE = "}\n</tool_call>"
CALL_SEPARATOR = "\n"
MAX_PARALLEL_CALLS = 8  # tool calls in one reply, at most (a small model may otherwise repeat calls until max_tokens)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Free text for tool_choice auto: anything that does not begin with a tool call (LLGuidance's & and ~ on lexemes).
FREE_TEXT = r"/(.|\n)+/ & ~/<tool_call>(.|\n)*/"


class GuidanceError(ValueError):
    """A constraint that cannot be compiled (an unsupported or invalid schema, a bad grammar, too slow to compile)."""


def styled(schema: dict[str, Any]) -> str:
    """The schema as JSON text, :func:`closed`, with the one-line JSON style added (a schema's own ``x-guidance``
    keys win)."""
    return json.dumps({**closed(schema), "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}})


def closed(schema: Any) -> Any:
    """The schema with ``"additionalProperties": false`` on every object schema that lists ``properties`` and says
    nothing about other keys (not inside ``allOf``, whose parts would then forbid each other's keys). Every reply
    valid under it is valid under the original; it keeps a small model from inventing keys until ``max_tokens``."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("allOf", "enum", "const", "default", "examples", "x-guidance") else
               {n: closed(s) for n, s in v.items()} if k in _SCHEMA_MAPS and isinstance(v, dict) else closed(v))
           for k, v in schema.items()}
    if "properties" in out and not _OPEN_ENDED & set(out):
        out["additionalProperties"] = False
    return out


_SCHEMA_MAPS = ("properties", "$defs", "definitions")
# Keys that say (or combine schemas that may say) which other keys an object takes: such objects are left open.
_OPEN_ENDED = {"additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "$ref"}


def reply_guidance(fmt: ReplyFormat) -> Guidance | None:
    """The constraint for ``response_format`` alone (no tool calls); None for plain text."""
    if fmt.kind == "json_object":
        return Guidance("json_schema", styled({"type": "object"}))
    if fmt.kind == "json_schema":
        return Guidance("json_schema", styled(fmt.schema or {}))
    if fmt.kind == "regex":
        return Guidance("regex", fmt.pattern or "")
    if fmt.kind == "grammar":
        return Guidance("lark_grammar", fmt.pattern or "")
    return None


def build(fmt: ReplyFormat | None) -> Guidance | None:
    """The constraint a reply decodes under; None when nothing constrains it."""
    if fmt is None:
        return None
    if not fmt.calls_allowed:
        return reply_guidance(fmt)
    tools = [t for t in fmt.tools if fmt.forced in (None, t.name)]
    single = fmt.forced is not None or not fmt.parallel
    rules = [f"calls: call{'' if single else ' (' + json.dumps(CALL_SEPARATOR) + ' call)*'}",
             "call: " + " | ".join(f"fn{i}" for i in range(len(tools)))]
    for i, tool in enumerate(tools):
        head = json.dumps(CALL_OPEN + tool.name + ARGS_OPEN)
        rules += [f"fn{i}: {head} args{i} {json.dumps(CALL_CLOSE)}", f"args{i}: %json {styled(tool.parameters)}"]
    free_text = fmt.tool_choice == "auto" and fmt.kind == "text"
    if fmt.tool_choice == "auto":
        reply = f"TEXT: {FREE_TEXT}" if free_text else f"reply: %json {reply_guidance(fmt).text}"
        rules = [f"start: {'TEXT' if free_text else 'reply'} | calls", reply, *rules]
    else:
        rules = ["start: calls", *rules]
    return Guidance("lark_grammar", "\n".join(rules) + "\n", max_calls=1 if single else MAX_PARALLEL_CALLS,
                    free_text=free_text)


def blame(fmt: ReplyFormat, error: GuidanceError, check: Callable[[Guidance], None]) -> tuple[str, str]:
    """(param, message) for a constraint of ``fmt`` that failed to compile with ``error``: each part is compiled
    alone with ``check`` (which raises :class:`GuidanceError`) to find the field it came from."""
    parts: list[tuple[str, str, Guidance | None]] = []
    if fmt.kind != "text":
        where = "response_format.json_schema.schema" if fmt.kind == "json_schema" else "response_format"
        parts.append(("response_format", where, reply_guidance(fmt)))
    if fmt.calls_allowed:
        for i, tool in enumerate(fmt.tools):
            parts.append(("tools", f"tools[{i}].function.parameters", Guidance("json_schema", styled(tool.parameters))))
    for param, where, guidance in parts:
        try:
            if guidance is not None:
                check(guidance)
        except GuidanceError as exc:
            return param, f"{where}: cannot be enforced: {exc}"
    param = parts[0][0] if parts else "response_format"
    return param, f"{param}: cannot be enforced: {error}"
