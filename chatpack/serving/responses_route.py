"""``POST /v1/responses``: OpenAI's Responses API on ``serve``, non-streamed and streamed, over the chat path.

The request is checked and translated into a chat-completions request (:mod:`chatpack.serving.responses_api`),
checked again as one (:func:`~chatpack.protocol.chat_request.parse_request`, :func:`~chatpack.serving.chat_payload.
check_structured`), and run like a chat request (:func:`~chatpack.serving.generation.whole_reply`,
:func:`~chatpack.serving.generation.stream_chunks`); the reply comes back as a Response object or as Responses stream
events (:mod:`chatpack.serving.responses_reply`), sent as ``event: <type>\\ndata: <json>\\n\\n``. Errors are OpenAI's
error body naming the Responses field (``text.format``, ``input``, ``max_output_tokens``), not the chat one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError, error_body
from chatpack.serving.chat_payload import check_structured, model_payload
from chatpack.serving.generation import (
    error_event,
    error_response,
    read_body,
    refused_if_busy,
    sse,
    stream_chunks,
    whole_reply,
)
from chatpack.serving.responses_api import ResponsesRequest, renamed, translate
from chatpack.serving.responses_reply import ResponseEvents, ResponseShell, response_object
from chatpack.serving.served_model import ServedModel

ROUTE = "/v1/responses"


def frame(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def renamed_error(error: JSONResponse, sources: tuple[str, ...]) -> JSONResponse:
    """An error response of the chat path with its ``param`` and message naming the Responses field."""
    body = json.loads(error.body)
    if error.status_code == 400:
        param, message = renamed(body["error"].get("param"), body["error"]["message"], sources)
        body = error_body(400, message, param)
    return JSONResponse(body, error.status_code)


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /v1/responses`` to ``app``, answered by ``served``."""

    @app.post(ROUTE)
    async def responses(request: Request):
        body, refused = await read_body(request, served)
        if refused is not None:
            return refused
        try:
            asked = translate(body)
        except RequestError as exc:
            return error_response(400, exc.message, exc.param)
        try:
            chat = parse_request(asked.chat)
            check_structured(chat, served)
        except RequestError as exc:
            param, message = renamed(exc.param, exc.message, asked.sources)
            return error_response(400, message, param)
        if (busy := refused_if_busy(served)) is not None:
            return busy
        shell = ResponseShell(served.name, asked.echo)
        if asked.stream:
            return await _stream(model_payload(chat), shell, asked)
        reply = await whole_reply(served, model_payload(chat), request)
        if isinstance(reply, JSONResponse):
            return renamed_error(reply, asked.sources)
        return JSONResponse(response_object(shell, reply))

    async def _stream(payload: dict[str, Any], shell: ResponseShell, asked: ResponsesRequest):
        items = await stream_chunks(served, payload)
        if isinstance(items, JSONResponse):
            return renamed_error(items, asked.sources)
        events = ResponseEvents(shell)

        async def stream() -> AsyncIterator[str]:
            try:
                for event in events.start():
                    yield frame(event)
                async for item in items:
                    if isinstance(item, Exception):
                        error = error_event(item)["error"]
                        if error.get("param"):
                            error["param"], error["message"] = renamed(error["param"], error["message"],
                                                                       asked.sources)
                        for event in events.fail(error):
                            yield frame(event)
                        return
                    for event in events.chunk(item):
                        yield frame(event)
                for event in events.finish():
                    yield frame(event)
            finally:
                await items.aclose()  # the client went away: stop generating now

        return sse(stream())
