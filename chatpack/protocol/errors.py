"""The one error mapping: a bad request is a :class:`RequestError` carrying ``param`` as data, and any exception becomes
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}`` through :func:`openai_error`.

``RequestError`` is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, so the pyfunc raises it as is and
``mlflow models serve`` answers HTTP 400 with its message (and ``param``). The server reads ``param`` with ``getattr``
from any 400 ``MlflowException``: a model loaded with its own copy of this package raises its own ``RequestError``
class, a different class object from the server's.
"""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_exceeded",
               500: "server_error", 503: "service_unavailable"}


class RequestError(MlflowException, ValueError):
    """A bad request: HTTP 400 with ``message``; ``param`` names the offending top-level field (OpenAI's ``param``),
    or is ``None`` when the request as a whole is wrong."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE, param=param)
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:  # exceptions pickle by args; ours are (param, message)
        return type(self), (self.param, self.message)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an HTTP status."""
    kind = ERROR_TYPES.get(status, "error")
    return {"error": {"message": message, "type": kind, "param": param, "code": kind}}


def openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for an exception raised while answering a request: 400 naming ``param`` for a
    bad request, 500 without internals otherwise."""
    if isinstance(exc, MlflowException) and exc.get_http_status_code() == 400:
        return 400, error_body(400, exc.message, getattr(exc, "param", None))
    return 500, error_body(500, f"generation failed: {type(exc).__name__}")
