"""Running one admitted request on the served model, for any route: a whole reply, or a stream of chunks.

Routes parse and check their own request shape, turn it into the pyfunc's chat payload, then call
:func:`whole_reply` or :func:`stream_chunks`. Both take the request as admitted (:meth:`ServedModel.admit`) and
release it when the model is done with it. Errors become OpenAI's error body through :func:`as_error` (400 naming
``param`` for a bad request, 500 without internals otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from chatpack.protocol.errors import error_body, openai_error
from chatpack.protocol.replies import chat_chunk
from chatpack.serving.served_model import ServedModel

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status)


def as_error(exc: Exception) -> JSONResponse:
    """Any exception from parsing or from the model as OpenAI's error body: 400 with ``param`` for a bad request
    (whichever copy of ``RequestError`` raised it, or any other 400 ``MlflowException``), 500 otherwise."""
    status, body = openai_error(exc)
    if status == 500:
        logger.exception("generation failed", exc_info=exc)
    return JSONResponse(body, status)


def whole_reply_chunks(reply: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A non-streaming model's reply as role, content and finish chunks."""
    choice = reply["choices"][0]
    cid, created = reply.get("id", "chatcmpl-0"), int(reply.get("created", time.time()))
    return [chat_chunk(cid, name, created, {"role": "assistant", "content": ""}),
            chat_chunk(cid, name, created, {"content": choice["message"]["content"] or ""}),
            chat_chunk(cid, name, created, {}, choice.get("finish_reason", "stop"), reply.get("usage"))]


async def predicted(served: ServedModel, request: Request | None, call: Callable[[], Any]) -> Any:
    """``call()`` (which calls the model) on the model's executor. While it runs, a client that goes away gets its
    work cancelled: the ONNX engine frees the rows of the requests this call submitted
    (:meth:`ServedModel.cancel`), so a non-streamed request does not keep decoding for nobody."""
    loop = asyncio.get_running_loop()
    worker: dict[str, int] = {}

    def run() -> Any:
        worker["thread"] = threading.get_ident()
        return call()

    future = loop.run_in_executor(served.executor, run)
    while request is not None and not future.done():
        await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
        if not future.done() and await request.is_disconnected():
            logger.info("client went away: generation cancelled")
            served.cancel(worker.get("thread"))
            break
    return await future


async def whole_reply(served: ServedModel, payload: dict[str, Any], request: Request | None = None
                      ) -> dict[str, Any] | JSONResponse:
    """The model's first reply to ``payload`` (a ``chat.completion`` dict, ``model`` set to the served name), or the
    error response; a client that goes away (``request`` disconnected) cancels it (:func:`predicted`)."""
    try:
        replies = await predicted(served, request, lambda: served.predict(payload))
    except Exception as exc:
        return as_error(exc)
    finally:
        served.release()
    reply = replies[0]
    if isinstance(reply, dict):
        reply = {**reply, "model": served.name}
    return reply


async def read_body(request: Request, served: ServedModel) -> tuple[Any, JSONResponse | None]:
    """(the request's JSON body, None), or (None, the error response): 503 while the model loads, 400 for a body that
    is not strict JSON (``NaN``/``Infinity`` included) or holds a string that is not text (an unpaired surrogate)."""
    if served.model is None:
        return None, error_response(503, "model is loading" if not served.load_error else served.load_error)
    raw = await request.body()
    try:
        body = json.loads(raw or b"null", parse_constant=_not_json)
    except ValueError as exc:
        return None, error_response(400, f"request body: not valid JSON ({exc})")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, error_response(400, f"request body: a string holds an unpaired UTF-16 surrogate "
                                         f"({exc.object[exc.start:exc.end]!a}), which is not text")
    return body, None


def _not_json(name: str) -> Any:
    """``NaN``/``Infinity``, which Python's JSON reader takes and JSON does not."""
    raise ValueError(f"{name} is not a JSON value")


def refused_if_busy(served: ServedModel) -> JSONResponse | None:
    """Admit the request (None), or the 429 response when ``queue_size`` requests are already admitted."""
    if served.admit():
        return None
    return error_response(429, f"server busy: {served.queue_size} requests already queued; retry later")


async def stream_items(served: ServedModel, chunks: Callable[[], Iterator[dict[str, Any]]]
                       ) -> JSONResponse | AsyncIterator[dict[str, Any] | Exception]:
    """Run ``chunks()`` on the model's executor (holding the model's serial lock) and hand its chunks to the event
    loop, ``model`` set to the served name. An error before the first chunk is returned as the error response; a later
    one is yielded as the exception. Closing the returned iterator (the client went away) closes ``chunks()``'s
    iterator, which stops generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            with served.serial:
                produced = chunks()
                try:
                    for chunk in produced:
                        if cancel.is_set():
                            logger.info("client went away: generation stopped")
                            break
                        put(("chunk", chunk))
                finally:
                    if hasattr(produced, "close"):
                        produced.close()  # ends generation and frees the model for the next request
        except Exception as exc:
            put(("error", exc))
        finally:
            served.release()
            put(("done", None))

    loop.run_in_executor(served.executor, produce)
    first = await queue.get()  # errors before the first chunk become a plain 4xx/5xx response
    if first[0] == "error":
        await queue.get()
        return as_error(first[1])

    async def items() -> AsyncIterator[dict[str, Any] | Exception]:
        item = first
        try:
            while item[0] != "done":
                yield item[1] if item[0] == "error" else {**item[1], "model": served.name}
                item = await queue.get()
        finally:
            cancel.set()  # the client disconnected, or we are done: either way stop generating

    return items()


async def stream_chunks(served: ServedModel, payload: dict[str, Any]
                        ) -> JSONResponse | AsyncIterator[dict[str, Any] | Exception]:
    """The model's reply to ``payload`` as ``chat.completion.chunk`` dicts, driven by its ``predict_stream`` (a model
    without one: its whole reply as three chunks); see :func:`stream_items`."""
    def chunks() -> Iterator[dict[str, Any]]:
        if served.streamable:
            return served.model.predict_stream(payload)
        return iter(whole_reply_chunks(served.model.predict(payload)[0], served.name))

    return await stream_items(served, chunks)


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


def error_event(exc: Exception) -> dict[str, Any]:
    """An error met mid-stream as the error body a client reads from the event."""
    return json.loads(as_error(exc).body)
