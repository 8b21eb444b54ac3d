"""pydantic's ``ValidationError`` as one line that names the field with its path and says what was expected.

``messages[0].role: 'wizard' is not one of system, user, assistant, developer``; ``temperature: must be between 0
and 2, got 3``; ``foo: unsupported field (supported: ...)``. One error is reported: an unsupported field first (by
name), then the conversation (``messages``/``prompt``), then the options in their declared order. pydantic's own
multi-line text never reaches a caller.
"""

from __future__ import annotations

from typing import Any, get_args

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from chatpack.protocol.request_model import MAX_STOP_SEQUENCES, ROLES

# What a field takes, keyed by its path with list indexes written "[]". Numbers are described from type and bounds.
EXPECTED = {
    "messages": "a non-empty list of {role, content} objects",
    "messages[]": "an object with 'role' and 'content'",
    "messages[].role": "one of " + ", ".join(ROLES),
    "messages[].content": "a string",
    "messages[].name": "a string",
    "messages[].tool_calls": "a list of {id, type, function} objects",
    "messages[].tool_calls[]": "an object with 'id', 'type' and 'function'",
    "messages[].tool_calls[].id": "a non-empty string",
    "messages[].tool_calls[].type": "'function'",
    "messages[].tool_calls[].function": "an object with 'name' and 'arguments'",
    "messages[].tool_calls[].function.name": "a non-empty string",
    "messages[].tool_calls[].function.arguments": "a string holding the arguments as JSON",
    "messages[].tool_call_id": "a string",
    "response_format": 'an object such as {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
    "tools": 'a list of {"type": "function", "function": {...}} objects',
    "tools[]": 'an object such as {"type": "function", "function": {"name": ..., "parameters": {...}}}',
    "tool_choice": '\'none\', \'auto\', \'required\' or {"type": "function", "function": {"name": ...}}',
    "parallel_tool_calls": "true or false",
    "prompt": "a non-empty string",
    "stop": f"a non-empty string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings",
    "stream": "true or false",
    "stream_options": 'an object such as {"include_usage": true}',
    "stream_options.include_usage": "true or false",
    "model": "a string",
    "logprobs": "true or false",
    "text_completion": "true or false",
    "user": "a string",
    "logit_bias": "an object",
    "metadata": "an object of string values",
    "store": "true or false",
    "service_tier": "a string",
}
LIMIT = 2**31 - 1  # upper bounds from here on are integer size limits (what the model's signature holds)
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_CONVERSATION = ("messages", "prompt")
# Errors inside these are reported for the field:
_WHOLE = ("stop", "tools", "tool_choice", "response_format", "logit_bias", "metadata")


def explain(exc: ValidationError, model: type[BaseModel]) -> tuple[str | None, str]:
    """(param, message) for the error a caller should fix first; ``param`` is the top-level field."""
    error = min(exc.errors(include_url=False), key=_rank)
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    param = str(loc[0]) if loc else None
    if param in _WHOLE:
        loc = (param,)  # a bad element (or union member) is a bad field: one message for every shape of it
    path, key = _path(loc), _key(loc)
    if kind == "extra_forbidden":
        supported = ", ".join(sorted(_owner(model, loc).model_fields))
        return param, f"{path}: unsupported field (supported: {supported})"
    if kind == "value_error":  # a model validator's own words, which start with the sub-field they blame
        return param, f"{path}.{(error.get('ctx') or {}).get('error', error['msg'])}"
    if kind == "missing":
        return param, f"{path}: required ({_expected(model, loc, key)})"
    if kind == "literal_error":
        return param, f"{path}: {shown(value)} is not {_expected(model, loc, key)}"
    if kind in _BOUND_ERRORS and len(loc) == 1:
        exceeded = kind in ("less_than", "less_than_equal")
        return param, f"{path}: must be {_bounds(model.model_fields[path], exceeded)}, got {value}"
    if kind == "too_short" and param in _CONVERSATION:
        return param, f"{path}: must not be empty"
    if kind == "too_long":
        limit, actual = (error.get("ctx") or {}).get("max_length"), len(value) if hasattr(value, "__len__") else "?"
        return param, f"{path}: at most {limit} {'sequences' if param == 'stop' else 'entries'}, got {actual}"
    return param, f"{path}: expected {_expected(model, loc, key)}, got {shown(value)}"


def _owner(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The (nested) model that owns the last key of ``loc``: followed through the fields' model annotations."""
    owner = model
    for part in loc[:-1]:
        field = owner.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:
            owner = _model_in(field.annotation) or owner
    return owner


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _rank(error: Any) -> tuple[int, str]:
    loc = error["loc"]
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        return 0, str(loc[0])  # several unsupported fields: the first by name
    return (1 if loc and loc[0] in _CONVERSATION else 2), ""


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "request"


def _key(loc: tuple[Any, ...]) -> str:
    return _path(tuple(0 if isinstance(p, int) else p for p in loc)).replace("[0]", "[]")


def _expected(model: type[BaseModel], loc: tuple[Any, ...], key: str) -> str:
    if key in EXPECTED:
        return EXPECTED[key]
    field = model.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    if field is None:
        return "a valid value"
    kinds = set(get_args(field.annotation)) | {field.annotation}
    noun = "an integer" if int in kinds else "a number" if float in kinds else "a valid value"
    bounds = _bounds(field)
    return f"{noun} {bounds}" if bounds else noun


def _bounds(field: FieldInfo, exceeded: bool = False) -> str:
    """The field's numeric bounds in words: ``between 0 and 2``, ``in (0, 1]``, ``>= 1``. An upper bound of
    :data:`LIMIT` or more is an integer's size limit, not a range: said only to a value that ``exceeded`` it
    (``<= 2147483647``)."""
    rules: dict[str, Any] = {}
    for rule in field.metadata:
        if isinstance(rule, Ge):
            rules["ge"] = rule.ge
        elif isinstance(rule, Gt):
            rules["gt"] = rule.gt
        elif isinstance(rule, Le):
            rules["le"] = rule.le
    if rules.get("le", 0) >= LIMIT:
        if exceeded:
            return f"<= {_number(rules['le'])}"
        del rules["le"]
    if "le" in rules:
        return (f"between {_number(rules['ge'])} and {_number(rules['le'])}" if "ge" in rules
                else f"in ({_number(rules.get('gt', 0))}, {_number(rules['le'])}]")
    return f">= {_number(rules['ge'])}" if "ge" in rules else ""


def _number(bound: float) -> str:
    """A bound as written: integers in full (``9223372036854775807``), other numbers short (``0.5``)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def shown(value: Any) -> str:
    """A short value as written (``'ten'``, ``5``); anything longer or nested by its type."""
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    return f"a {type(value).__name__}" if not isinstance(value, str) else f"a string of {len(value)} characters"
