"""``POST /v1/responses``: OpenAI's Responses API on ``serve``, non-streamed and streamed, over the chat path.

The request is checked and translated into a chat-completions request (:mod:`chatpack.serving.responses.protocol`),
parsed as one (:func:`~chatpack.protocol.chat_request.parse_request`, :func:`~chatpack.serving.chat.serving.
check_supported`), and run like a chat request (:meth:`~chatpack.serving.served_model.ServedModel.reply`,
:meth:`~chatpack.serving.served_model.ServedModel.stream`); the reply comes back as a Response object or as Responses
stream events (:mod:`chatpack.serving.responses.serving`), sent as ``event: <type>\\ndata: <json>\\n\\n``. Errors are
OpenAI's error body naming the Responses field (``text.format``, ``input``, ``max_output_tokens``), not the chat one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.protocol.chat_request import ChatRequest, parse_request
from chatpack.protocol.errors import RequestError, error_body
from chatpack.serving.chat.serving import check_supported
from chatpack.serving.http import error_event, open_request, sse
from chatpack.serving.model_calls import stream_items, whole_reply
from chatpack.serving.responses.protocol import ResponsesRequest, renamed, translate
from chatpack.serving.responses.serving import ResponseEvents, ResponseShell, response_object
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


def parse_responses(body: Any, served: ServedModel) -> tuple[ResponsesRequest, ChatRequest]:
    """The Responses request and the chat request it becomes, checked; errors name the Responses field."""
    asked = translate(body)
    try:
        return asked, check_supported(parse_request(asked.chat), served)
    except RequestError as exc:
        raise RequestError(*renamed(exc.param, exc.message, asked.sources)) from None


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /v1/responses`` to ``app``, answered by ``served``."""

    @app.post(ROUTE)
    async def responses(request: Request):
        parsed, refused = await open_request(request, served, lambda body: parse_responses(body, served))
        if refused is not None:
            return refused
        asked, chat = parsed
        shell = ResponseShell(served.name, asked.echo)
        if asked.stream:
            return await _stream(chat, shell, asked)
        reply = await whole_reply(served, lambda: served.reply(chat), request)
        if isinstance(reply, JSONResponse):
            return renamed_error(reply, asked.sources)
        return JSONResponse(response_object(shell, reply))

    async def _stream(chat: ChatRequest, shell: ResponseShell, asked: ResponsesRequest):
        items = await stream_items(served, lambda: served.stream(chat))
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
