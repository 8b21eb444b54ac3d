"""The small checks every part of a Messages request shares: an object's keys, a string, a cache-control breakpoint,
and a value shown short in an error message. Each refusal is a :class:`~chatpack.protocol.errors.RequestError` whose
message starts with the field's path."""

from __future__ import annotations

import json
from typing import Any

from chatpack.protocol.errors import RequestError


def fields_of(value: Any, path: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = (),
              param: str = "messages") -> dict[str, Any]:
    """``value`` as an object (None entries dropped) with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(value, dict):
        raise RequestError(param, f"{path}: expected an object, got {short(value)}")
    value = {k: v for k, v in value.items() if v is not None}
    for key in value:
        if allowed is not None and key not in allowed:
            raise RequestError(param, f"{path}.{key}: unsupported field (supported: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise RequestError(param, f"{path}.{key}: required")
    return value


def string_at(value: Any, path: str, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        param = path.split("[")[0].split(".")[0]
        raise RequestError(param, f"{path}: expected a {'' if empty else 'non-empty '}string, got {short(value)}")
    return value


def check_cache_control(value: Any, path: str) -> None:
    """A prompt-caching breakpoint: accepted (there is no prompt cache here to write), if it is well formed."""
    param = path.split("[")[0].split(".")[0]
    body = fields_of(value, path, ("type", "ttl"), ("type",), param=param)
    if body["type"] != "ephemeral":
        raise RequestError(param, f"{path}.type: {short(body['type'])} is not 'ephemeral'")
    if body.get("ttl", "5m") not in ("5m", "1h"):
        raise RequestError(param, f"{path}.ttl: {short(body['ttl'])} is not '5m' or '1h'")


def short(value: Any) -> str:
    """A short value as written (scalars as Python shows them, small lists and objects as JSON), else its type."""
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else ("null" if value is None else f"a {type(value).__name__}")
