"""The one error mapping and the one refusal of unimplemented fields: a bad request is a :class:`RequestError` carrying
``param`` as data, and any exception becomes OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
through :func:`openai_error`; a field held at anything but its neutral value is refused by name (:class:`Neutral`).

``RequestError`` is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, so the pyfunc raises it as is and ``mlflow
models serve`` answers HTTP 400 with its message (and ``param``). The server reads ``param`` with ``getattr`` from any
400 ``MlflowException``: a model loaded with its own copy of this package raises its own ``RequestError`` class, a
different class object from the server's. Any other 400 ``MlflowException`` (MLflow's schema enforcement refusing a row)
is cut to a short message naming the column it names (:func:`short_message`), never the schema dump.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MAX_MESSAGE = 300  # characters of a foreign 400 message that reach the caller (MLflow's can hold the whole schema)
_SCHEMA_FAILURE = re.compile(r"^Failed to enforce schema of data .*\. Error: ", re.DOTALL)
_COLUMN = re.compile(r"\b(?:column|key|field)s? [`'\"]?(\w+)")
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


class Neutral(NamedTuple):
    """A field this server does not implement, accepted at its neutral value only (clients send the defaults
    explicitly): ``accepts(value)`` says whether ``value`` is neutral, ``allowed`` names the neutral values in words,
    ``why`` says why nothing else is accepted. Every API surface refuses such fields through
    :func:`refuse_unless_neutral`, in the same words."""

    accepts: Callable[[Any], bool]
    allowed: str
    why: str


def refuse_unless_neutral(values: Mapping[str, Any], fields: Mapping[str, Neutral],
                          shown: Callable[[Any], str] = repr) -> None:
    """Raise :class:`RequestError` naming the first of ``fields`` whose value in ``values`` is set and not neutral."""
    for name, rule in fields.items():
        value = values.get(name)
        if value is not None and not rule.accepts(value):
            raise RequestError(name, f"{name}: only {rule.allowed} is accepted ({rule.why}), got {shown(value)}")


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an HTTP status."""
    kind = ERROR_TYPES.get(status, "error")
    return {"error": {"message": message, "type": kind, "param": param, "code": kind}}


def short_message(message: str) -> tuple[str, str | None]:
    """(message, param) of a 400 that is not ours, such as MLflow's schema enforcement failing, whose message embeds the
    request and the whole schema: the reason only (MLflow's ``Error: ...`` part), its first line, at most
    :data:`MAX_MESSAGE` characters, led by the column it names (``param``) when it names one."""
    reason = _SCHEMA_FAILURE.sub("", message, count=1).strip()
    reason = (reason.splitlines() or [""])[0].strip() or "the request does not match the model's input schema"
    if len(reason) > MAX_MESSAGE:
        reason = reason[:MAX_MESSAGE - 3].rstrip() + "..."
    column = _COLUMN.search(reason)
    param = column.group(1) if column else None
    return (f"{param}: {reason}" if param and not reason.startswith(param) else reason), param


def openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for an exception raised while answering a request: 400 naming ``param`` for a
    bad request, 500 without internals otherwise."""
    if isinstance(exc, MlflowException) and exc.get_http_status_code() == 400:
        if hasattr(exc, "param"):  # a RequestError, ours or a served model's copy of it: our own words
            return 400, error_body(400, exc.message, exc.param)
        return 400, error_body(400, *short_message(exc.message))
    return 500, error_body(500, f"generation failed: {type(exc).__name__}")


STREAM_OPTIONS_ALONE = 'stream_options: only allowed with "stream": true (as OpenAI)'
