"""API keys on ``serve``: the ASGI guard that refuses ``/v1/*`` without a configured key, and the start-up log of how
the endpoint is protected.

With at least one key configured, every route under ``/v1/``, ``/tokenize`` and ``/detokenize`` (and ``/metrics``
with ``metrics_auth``) needs one of them, as ``Authorization: Bearer <key>`` (OpenAI's clients) or
``x-api-key: <key>`` (Anthropic's); ``/health`` stays open for probes. Without a key the server is open, so
:func:`log_auth` warns when it listens beyond loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from chatpack.protocol.errors import error_body
from chatpack.serving.messages.errors import anthropic_error_body, is_messages_path

logger = logging.getLogger(__name__)

API_KEY_ENV = "CHATPACK_API_KEY"  # the recommended way to give ``serve`` its key (a flag shows in the process list)
API_PREFIX = "/v1"  # every route under it needs a key once keys are configured
METRICS_PATH = "/metrics"
TOKEN_PATHS = ("/tokenize", "/detokenize")  # outside /v1 (where vLLM and llama.cpp serve them), guarded as /v1


class ApiKeyGuard:
    """Pure ASGI middleware: once ``keys`` holds at least one key, every request under ``/v1`` (chat completions,
    completions, responses, models and any route added there later; ``/metrics`` too with ``metrics_auth``) must
    carry one of them, and so must ``/tokenize`` and ``/detokenize``; else it is answered HTTP 401 with OpenAI's
    error body (``code: invalid_api_key``; under ``/v1/messages`` Anthropic's, ``authentication_error``) and
    ``WWW-Authenticate: Bearer``, before any route runs (an unknown ``/v1`` route without a key is 401, not 404).

    A key is accepted as ``Authorization: Bearer <key>`` (OpenAI's clients) or as ``x-api-key: <key>`` (Anthropic's
    header, which its SDK sends to ``/v1/messages``; for simplicity it is accepted on every guarded route). The
    presented value is compared with every configured key in constant time (SHA-256 digests through
    :func:`hmac.compare_digest`, no early exit), and no key, presented or configured, is logged or echoed.

    It sits inside :class:`~chatpack.serving.observability.middleware.RequestObserver`, so a 401 is counted in the
    metrics by route
    and status like any other response (it is not traced: see the observer).
    """

    def __init__(self, app: Any, keys: Sequence[str], metrics_auth: bool = False):
        self.app, self.metrics_auth = app, metrics_auth
        self._digests = tuple(hashlib.sha256(key.encode("utf-8")).digest() for key in keys)

    def guarded(self, path: str) -> bool:
        if not self._digests:
            return False
        return (path == API_PREFIX or path.startswith(API_PREFIX + "/") or path in TOKEN_PATHS
                or (self.metrics_auth and path == METRICS_PATH))

    def accepted(self, presented: list[bytes]) -> bool:
        ok = False
        for value in presented:
            digest = hashlib.sha256(value).digest()
            for key in self._digests:
                ok |= hmac.compare_digest(digest, key)
        return ok

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not self.guarded(route_path(scope)):
            await self.app(scope, receive, send)
            return
        presented = presented_keys(scope["headers"])
        if self.accepted(presented):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # a later /v1 WebSocket route: refused before the handshake (policy violation)
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if presented:
            message = "invalid API key"
        elif any(name == b"authorization" for name, _ in scope["headers"]):
            message = "Authorization: only the Bearer scheme is accepted: send 'Authorization: Bearer <key>'"
        else:
            message = "missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
        await unauthorized(message, route_path(scope))(scope, receive, send)


def route_path(scope: dict) -> str:
    """The path the router matches (``root_path`` taken off, as Starlette does), so a prefix cannot dodge the guard."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request presents: ``Authorization: Bearer <key>`` (scheme in any case) and ``x-api-key``."""
    found = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                found.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            found.append(value.strip())
    return found


def unauthorized(message: str, path: str = "") -> JSONResponse:
    """HTTP 401 in OpenAI's shape (:func:`~chatpack.protocol.errors.error_body`, as ``error_response`` builds it,
    with OpenAI's type and code for a bad key; under ``/v1/messages`` Anthropic's ``authentication_error``) and
    ``WWW-Authenticate: Bearer``."""
    if is_messages_path(path):
        return JSONResponse(anthropic_error_body(401, message), 401, headers={"WWW-Authenticate": "Bearer"})
    body = error_body(401, message)
    body["error"] |= {"type": "invalid_request_error", "code": "invalid_api_key"}
    return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def log_auth(host: str, api_keys: Sequence[str], metrics_auth: bool = False) -> None:
    """Say how the endpoint is protected: INFO with the number of keys (never a key), or a WARNING when it listens
    beyond loopback with no key at all."""
    if api_keys:
        logger.info("API-key auth on: %d key%s accepted on %s/*, %s%s ('Authorization: Bearer <key>' or "
                    "'x-api-key')", len(api_keys), "" if len(api_keys) == 1 else "s", API_PREFIX,
                    " and ".join(TOKEN_PATHS),
                    f" and {METRICS_PATH}" if metrics_auth else f"; {METRICS_PATH} and /health open")
    elif not is_loopback(host):
        logger.warning("Listening on %s with NO authentication: anyone who can reach this port can use the model. "
                       "Set a key with the %s environment variable, or --api_key_file PATH (one key a line)",
                       host, API_KEY_ENV)
