"""``POST /v1/chat/completions``: OpenAI's chat completions, whole or streamed.

The body is parsed once into a :class:`~chatpack.protocol.chat_request.ChatRequest` (:func:`~chatpack.serving.chat.
protocol.parse_chat`), checked against what the served model implements (:func:`~chatpack.serving.chat.serving.
check_supported`) and admitted (:func:`~chatpack.serving.http.open_request`); the served model answers a
``chat.completion`` object, or with ``"stream": true`` Server-Sent Events of ``chat.completion.chunk`` objects ending
with ``data: [DONE]`` (the usage in a last chunk of no choices with ``stream_options.include_usage``, as OpenAI; with
``n`` > 1 the choices one after another).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.serving.chat.protocol import parse_chat
from chatpack.serving.chat.serving import check_supported, choice_chunks, openai_chunks
from chatpack.serving.http import data_events, open_request
from chatpack.serving.model_calls import stream_items, whole_reply
from chatpack.serving.served_model import ServedModel

ROUTE = "/v1/chat/completions"


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /v1/chat/completions`` to ``app``, answered by ``served``."""

    @app.post(ROUTE)
    async def chat_completions(request: Request):
        chat, refused = await open_request(request, served, lambda body: check_supported(parse_chat(body), served))
        if refused is not None:
            return refused
        if chat.stream:
            items = await stream_items(served, lambda: openai_chunks(choice_chunks(served, chat), chat.include_usage))
            return items if isinstance(items, JSONResponse) else data_events(items)
        reply = await whole_reply(served, lambda: served.reply(chat), request)
        return reply if isinstance(reply, JSONResponse) else JSONResponse(reply)
