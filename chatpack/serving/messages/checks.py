"""The Messages request's own shared check, a cache-control breakpoint; the object, string and short-value checks
it shares with the Responses API are :mod:`chatpack.serving.request_checks`."""

from __future__ import annotations

from typing import Any

from chatpack.protocol.errors import RequestError
from chatpack.serving.request_checks import fields_of, short


def check_cache_control(value: Any, path: str) -> None:
    """A prompt-caching breakpoint: accepted (there is no prompt cache here to write), if it is well formed."""
    param = path.split("[")[0].split(".")[0]
    body = fields_of(value, path, ("type", "ttl"), ("type",), param=param)
    if body["type"] != "ephemeral":
        raise RequestError(param, f"{path}.type: {short(body['type'])} is not 'ephemeral'")
    if body.get("ttl", "5m") not in ("5m", "1h"):
        raise RequestError(param, f"{path}.ttl: {short(body['ttl'])} is not '5m' or '1h'")
