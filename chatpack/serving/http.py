"""The HTTP edge every route shares: the route opening (:func:`open_request`: model loaded, strict JSON body, parsed
once into the route's typed request, admitted), error responses in the route's API shape (:class:`ErrorShape`), and
Server-Sent Events.

A route hands :func:`open_request` its parser (body -> typed request, raising
:class:`~chatpack.protocol.errors.RequestError` naming the field) and gets either the typed request, admitted, or
the response to send: 503 while the model loads, 400 for a body that is not JSON or a request its parser refuses,
429 when ``queue_size`` requests are already admitted. An admitted request is released by the model call that runs it
(:mod:`chatpack.serving.model_calls`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from chatpack.protocol.errors import RequestError, error_body, openai_error
from chatpack.serving.served_model import ServedModel

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ErrorShape:
    """How one API surface writes an error: ``body(status, message, param)`` -> its JSON error body (OpenAI's by
    default; the Anthropic Messages routes write theirs)."""

    body: Callable[[int, str, str | None], dict[str, Any]] = error_body

    def response(self, status: int, message: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(status, message, param), status)

    def of(self, exc: BaseException) -> JSONResponse:
        """Any exception from parsing or from the model: 400 naming ``param`` for a bad request (whichever copy of
        ``RequestError`` raised it, or any other 400 ``MlflowException``), 500 without internals otherwise."""
        status, openai_body = openai_error(exc)
        if status == 500:
            logger.exception("generation failed", exc_info=exc)
        error = openai_body["error"]
        return self.response(status, error["message"], error.get("param"))


OPENAI = ErrorShape()


async def open_request(request: Request, served: ServedModel, parse: Callable[[Any], T],
                       errors: ErrorShape = OPENAI) -> tuple[T | None, JSONResponse | None]:
    """(the typed request ``parse(body)`` made, admitted; None) or (None, the response to send instead)."""
    if served.model is None:
        return None, errors.response(503, served.load_error or "model is loading")
    body, refused = await read_body(request, errors)
    if refused is not None:
        return None, refused
    try:
        parsed = parse(body)
    except RequestError as exc:
        return None, errors.response(400, exc.message, exc.param)
    if not served.admit():
        return None, errors.response(429, f"server busy: {served.queue_size} requests already queued; retry later")
    return parsed, None


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error response (the OpenAI routes' :class:`ErrorShape`)."""
    return OPENAI.response(status, message, param)


def as_error(exc: BaseException) -> JSONResponse:
    """Any exception as OpenAI's error response (see :meth:`ErrorShape.of`)."""
    return OPENAI.of(exc)


async def read_body(request: Request, errors: ErrorShape = OPENAI) -> tuple[Any, JSONResponse | None]:
    """(the request's JSON body, None), or (None, the 400 response) for a body that is not strict JSON (``NaN``/
    ``Infinity`` included) or holds a string that is not text (an unpaired surrogate)."""
    raw = await request.body()
    try:
        body = json.loads(raw or b"null", parse_constant=_not_json)
    except ValueError as exc:
        return None, errors.response(400, f"request body: not valid JSON ({exc})")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, errors.response(400, f"request body: a string holds an unpaired UTF-16 surrogate "
                                         f"({exc.object[exc.start:exc.end]!a}), which is not text")
    return body, None


def _not_json(name: str) -> Any:
    """``NaN``/``Infinity``, which Python's JSON reader takes and JSON does not."""
    raise ValueError(f"{name} is not a JSON value")


def data_events(items: AsyncIterator[dict[str, Any] | Exception]) -> StreamingResponse:
    """OpenAI's plain SSE stream of ``items``: ``data: <json>`` each (an error as its error body, which ends the
    stream), then ``data: [DONE]``. The client going away closes ``items`` (stops generating)."""
    async def events() -> AsyncIterator[str]:
        try:
            async for item in items:
                yield f"data: {json.dumps(error_event(item) if isinstance(item, Exception) else item)}\n\n"
                if isinstance(item, Exception):
                    break
            yield "data: [DONE]\n\n"
        finally:
            await items.aclose()

    return sse(events())


def sse(events: AsyncIterator[str]) -> StreamingResponse:
    """Server-Sent Events from ``events`` (each already ``data: ...\\n\\n``), unbuffered."""
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def error_event(exc: BaseException, errors: ErrorShape = OPENAI) -> dict[str, Any]:
    """An error met mid-stream as the error body a client reads from the event."""
    return json.loads(errors.of(exc).body)
