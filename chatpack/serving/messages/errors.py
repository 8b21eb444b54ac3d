"""Anthropic's error shape, for every response under ``/v1/messages`` (the routes' own errors, a 401 from the API-key
guard, an unknown route or method there): ``{"type": "error", "error": {"type": ..., "message": ...}}`` with the
error type Anthropic gives the status (:data:`ERROR_TYPES`). A leaf module: the guard and the app import it too."""

from __future__ import annotations

from typing import Any

MESSAGES_PREFIX = "/v1/messages"
# Anthropic's error types by HTTP status (its "Errors" reference); any other status is an api_error.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """Anthropic's error body for an HTTP status (``param`` is not part of it: messages start with the field)."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def is_messages_path(path: str) -> bool:
    """Whether ``path`` is under the Messages API (its errors then take Anthropic's shape)."""
    return path == MESSAGES_PREFIX or path.startswith(MESSAGES_PREFIX + "/")
