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

from chatpack.protocol.request_model import MAX_STOP_SEQUENCES, ROLES, ChatMessage

# What a field takes, keyed by its path with list indexes written "[]". Numbers are described from type and bounds.
EXPECTED = {
    "messages": "a non-empty list of {role, content} objects",
    "messages[]": "an object with 'role' and 'content'",
    "messages[].role": "one of " + ", ".join(ROLES),
    "messages[].content": "a string",
    "messages[].name": "a string",
    "prompt": "a non-empty string",
    "stop": f"a non-empty string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings",
    "stream": "true or false",
    "stream_options": 'an object such as {"include_usage": true}',
    "stream_options.include_usage": "true or false",
    "model": "a string",
    "user": "a string",
}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_CONVERSATION = ("messages", "prompt")


def explain(exc: ValidationError, model: type[BaseModel]) -> tuple[str | None, str]:
    """(param, message) for the error a caller should fix first; ``param`` is the top-level field."""
    error = min(exc.errors(include_url=False), key=_rank)
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    param = str(loc[0]) if loc else None
    if param == "stop":
        loc = ("stop",)  # a bad element is a bad stop: one message for every shape of it
    path, key = _path(loc), _key(loc)
    if kind == "extra_forbidden":
        owner = ChatMessage if param == "messages" and len(loc) > 1 else model  # the one nested strict model
        supported = ", ".join(sorted(owner.model_fields))
        return param, f"{path}: unsupported field (supported: {supported})"
    if kind == "missing":
        return param, f"{path}: required ({_expected(model, loc, key)})"
    if kind == "literal_error":
        return param, f"{path}: {_shown(value)} is not {_expected(model, loc, key)}"
    if kind in _BOUND_ERRORS and len(loc) == 1:
        return param, f"{path}: must be {_bounds(model.model_fields[path])}, got {value}"
    if kind == "too_short" and param in _CONVERSATION:
        return param, f"{path}: must not be empty"
    if kind == "too_long":
        limit, actual = (error.get("ctx") or {}).get("max_length"), len(value) if hasattr(value, "__len__") else "?"
        return param, f"{path}: at most {limit} {'sequences' if param == 'stop' else 'entries'}, got {actual}"
    return param, f"{path}: expected {_expected(model, loc, key)}, got {_shown(value)}"


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


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds in words: ``between 0 and 2``, ``in (0, 1]``, ``>= 1``."""
    rules: dict[str, Any] = {}
    for rule in field.metadata:
        if isinstance(rule, Ge):
            rules["ge"] = rule.ge
        elif isinstance(rule, Gt):
            rules["gt"] = rule.gt
        elif isinstance(rule, Le):
            rules["le"] = rule.le
    if "le" in rules:
        return (f"between {rules['ge']:g} and {rules['le']:g}" if "ge" in rules
                else f"in ({rules.get('gt', 0):g}, {rules['le']:g}]")
    return f">= {rules['ge']:g}" if "ge" in rules else ""


def _shown(value: Any) -> str:
    """A short value as written (``'ten'``, ``5``); anything longer or nested by its type."""
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    return f"a {type(value).__name__}" if not isinstance(value, str) else f"a string of {len(value)} characters"
