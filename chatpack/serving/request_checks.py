"""The hand-written shape checks of the API surfaces that translate their request themselves (the Responses API,
Anthropic's Messages API): an object's keys, a string, and a value shown short in an error message. Each refusal is a
:class:`~chatpack.protocol.errors.RequestError` whose message starts with the field's path."""

from __future__ import annotations

import json
from typing import Any

from chatpack.protocol.errors import RequestError


def fields_of(value: Any, path: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = (),
              param: str = "messages", drop_none: bool = True) -> dict[str, Any]:
    """``value`` as an object with only ``allowed`` keys (None: any) and every ``required`` one; with ``drop_none``
    its None entries are dropped first (as left-out fields)."""
    if not isinstance(value, dict):
        raise RequestError(param, f"{path}: expected an object, got {short(value)}")
    if drop_none:
        value = {k: v for k, v in value.items() if v is not None}
    for key in value:
        if allowed is not None and key not in allowed:
            raise RequestError(param, f"{path}.{key}: unsupported field (supported: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise RequestError(param, f"{path}.{key}: required")
    return value


def string_at(value: Any, path: str, empty: bool = True) -> str:
    """``value`` as a string (non-empty unless ``empty``), refused naming the top-level field of ``path``."""
    if not isinstance(value, str) or (not empty and not value):
        param = path.split("[")[0].split(".")[0]
        raise RequestError(param, f"{path}: expected a {'' if empty else 'non-empty '}string, got {short(value)}")
    return value


def short(value: Any) -> str:
    """A short value as written (scalars as Python shows them, small lists and objects as JSON), else its type."""
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else ("null" if value is None else f"a {type(value).__name__}")
