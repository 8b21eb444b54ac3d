"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API on ``serve``, over the chat
path.

The request is checked and translated into a chat-completions request (:mod:`chatpack.serving.messages.protocol`),
parsed as one (:func:`~chatpack.protocol.chat_request.parse_request`, :func:`~chatpack.serving.chat.serving.
check_supported`) and run like a chat request (:meth:`~chatpack.serving.served_model.ServedModel.reply`, or
:meth:`~chatpack.serving.served_model.ServedModel.stream` for a stream, and for a whole reply that has stop sequences
to find); the reply comes back as a ``message`` object or as the Messages stream events
(:mod:`chatpack.serving.messages.serving`), sent as ``event: <type>\\ndata: <json>\\n\\n``, with a ``ping`` after
``message_start`` and every :data:`PING_SECONDS` of silence. Every error is in Anthropic's shape
(:mod:`chatpack.serving.messages.errors`) and names the Messages field (``tools[0].input_schema``,
``messages[1].content[0].tool_use_id``), not the chat one; one met mid-stream is an ``error`` event. ``count_tokens``
answers ``{"input_tokens": N}``: the prompt's tokens after the chat template, tools included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.protocol.chat_request import ChatRequest, parse_request
from chatpack.protocol.errors import RequestError
from chatpack.serving.chat.serving import check_supported
from chatpack.serving.http import ErrorShape, open_request, read_body, sse
from chatpack.serving.messages.errors import anthropic_error_body
from chatpack.serving.messages.protocol import MessagesRequest, renamed, translate
from chatpack.serving.messages.serving import MessageEvents, MessageShell, message_object
from chatpack.serving.model_calls import stream_items, whole_reply
from chatpack.serving.observability.request_context import current
from chatpack.serving.served_model import ServedModel
from chatpack.serving.tokens.serving import ModelTokens, model_tokens, require_tokens

ROUTE = "/v1/messages"
COUNT_ROUTE = "/v1/messages/count_tokens"
ANTHROPIC = ErrorShape(body=anthropic_error_body)
PING_SECONDS = 10.0  # a stream silent this long (a long prefill) gets a ping, so clients and proxies keep it open


def frame(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def renaming(sources: tuple[str, ...]) -> ErrorShape:
    """Anthropic's error shape, a bad request's message naming the Messages field (for errors met after parsing:
    a constraint that does not compile, a prompt over the context)."""
    def body(status: int, message: str, param: str | None) -> dict[str, Any]:
        if status == 400:
            param, message = renamed(param, message, sources)
        return anthropic_error_body(status, message, param)

    return ErrorShape(body=body)


def parse_messages(body: Any, served: ServedModel, counting: bool = False) -> tuple[MessagesRequest, ChatRequest]:
    """The Messages request and the chat request it becomes, checked; errors name the Messages field."""
    asked = translate(body, counting)
    try:
        return asked, check_supported(parse_request(asked.chat), served)
    except RequestError as exc:
        raise RequestError(*renamed(exc.param, exc.message, asked.sources)) from None


def note_reply(message: dict[str, Any], streamed: bool, asked: MessagesRequest) -> None:
    """What the trace and metrics of this request record of its reply: the Messages outcome (``stop_reason``, the
    counts, the text), which the chat chunks alone do not have when a stop sequence ended the reply here."""
    context = current()
    if context is None:
        return
    counts = message["usage"]
    context.note_usage({"prompt_tokens": counts["input_tokens"], "completion_tokens": counts["output_tokens"]},
                       message["stop_reason"])
    context.pieces = ["".join(b["text"] for b in message["content"] if b["type"] == "text")]
    context.streamed = streamed
    if asked.stop_sequences and isinstance(context.payload, dict):
        context.payload = {**context.payload, "stop": list(asked.stop_sequences)}


def scanned_stops(asked: MessagesRequest) -> tuple[str, ...]:
    """The stop sequences to find in the reply: none inside a structured output (as on chat: they apply to free
    text only, and tool input is never free text)."""
    return () if asked.structured else asked.stop_sequences


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` to ``app``, answered by ``served``."""

    @app.post(ROUTE)
    async def messages(request: Request):
        parsed, refused = await open_request(request, served, lambda body: parse_messages(body, served), ANTHROPIC)
        if refused is not None:
            return refused
        asked, chat = parsed
        errors, shell = renaming(asked.sources), MessageShell(served.name)
        if asked.stream:
            return await _stream(chat, asked, shell, errors)
        if scanned_stops(asked):
            message = await whole_reply(served, lambda: _folded(chat, asked, shell), request, errors)
        else:
            reply = await whole_reply(served, lambda: served.reply(chat), request, errors)
            message = reply if isinstance(reply, JSONResponse) else message_object(shell, reply, asked.max_tokens)
        if isinstance(message, JSONResponse):
            return message
        note_reply(message, False, asked)
        return JSONResponse(message)

    @app.post(COUNT_ROUTE)
    async def count_tokens(request: Request):
        if served.model is None:
            return ANTHROPIC.response(503, served.load_error or "model is loading")
        body, refused = await read_body(request, ANTHROPIC)
        if refused is not None:
            return refused
        try:
            asked, chat = parse_messages(body, served, counting=True)
            tokens = require_tokens(served, "count_tokens")
        except RequestError as exc:
            return ANTHROPIC.response(400, exc.message, exc.param)
        try:
            ids = await asyncio.to_thread(tokens.prompt_ids, chat)
        except Exception as exc:
            return renaming(asked.sources).of(exc)
        return JSONResponse({"input_tokens": len(ids)})

    def _folded(chat: ChatRequest, asked: MessagesRequest, shell: MessageShell) -> dict[str, Any]:
        """A whole reply with stop sequences to find: its chat stream read here (on the model's executor) and
        closed at the first stop sequence, which ends generation."""
        tokens = model_tokens(served)
        events = MessageEvents(shell, scanned_stops(asked), asked.max_tokens, None,
                               tokens.count_text if tokens else None)
        with served.serial:
            chunks: Iterator[dict[str, Any]] = served.stream(chat)
            try:
                for chunk in chunks:
                    events.chunk(chunk)
                    if events.stopped:
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        if events.stopped and tokens is not None:
            events.input_tokens = len(tokens.prompt_ids(chat))
        events.finish()
        return events.message()

    async def _stream(chat: ChatRequest, asked: MessagesRequest, shell: MessageShell, errors: ErrorShape):
        tokens: ModelTokens | None = model_tokens(served)
        counted: dict[str, int] = {}

        def chunks() -> Iterator[dict[str, Any]]:
            if tokens is not None:  # message_start carries the prompt's count, before any reply token
                counted["input"] = len(tokens.prompt_ids(chat))
            return served.stream(chat)

        items = await stream_items(served, chunks, errors)
        if isinstance(items, JSONResponse):
            return items
        events = MessageEvents(shell, scanned_stops(asked), asked.max_tokens, counted.get("input"),
                               tokens.count_text if tokens else None)

        async def stream() -> AsyncIterator[str]:
            pending: asyncio.Future | None = None
            try:
                for event in events.start():
                    yield frame(event)
                while True:
                    pending = pending or asyncio.ensure_future(anext(items))
                    done, _ = await asyncio.wait({pending}, timeout=PING_SECONDS)
                    if not done:
                        yield frame({"type": "ping"})
                        continue
                    task, pending = pending, None
                    try:
                        item = task.result()
                    except StopAsyncIteration:
                        break
                    if isinstance(item, Exception):
                        yield frame(MessageEvents.error(json.loads(errors.of(item).body)))
                        return
                    for event in events.chunk(item):
                        yield frame(event)
                    if events.stopped:
                        break
                for event in events.finish():
                    yield frame(event)
                note_reply(events.message(), True, asked)
            finally:
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await pending
                await items.aclose()  # the client went away, or a stop sequence ended the reply: stop generating

        return sse(stream())
