"""Running one admitted request on the served model, for any route: a whole reply, or a stream of chunks.

Both take the request as admitted (:func:`~chatpack.serving.http.open_request`) and release it when the model is done
with it. The work runs on the served model's executor; a client that goes away cancels it (a non-streamed request:
the ONNX engine frees its rows; a stream: its iterator is closed, which stops generation). Errors before the first
chunk are returned as the route's error response; later ones are yielded as the exception.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from chatpack.serving.http import OPENAI, ErrorShape
from chatpack.serving.served_model import ServedModel

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there

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


async def whole_reply(served: ServedModel, call: Callable[[], Any], request: Request | None = None,
                      errors: ErrorShape = OPENAI) -> Any:
    """``call()`` (one of the served model's calls, e.g. ``lambda: served.reply(chat)``), or the error response;
    a client that goes away (``request`` disconnected) cancels it (:func:`predicted`)."""
    try:
        return await predicted(served, request, call)
    except Exception as exc:
        return errors.of(exc)
    finally:
        served.release()


async def stream_items(served: ServedModel, chunks: Callable[[], Iterator[dict[str, Any]]],
                       errors: ErrorShape = OPENAI) -> JSONResponse | AsyncIterator[dict[str, Any] | Exception]:
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
        return errors.of(first[1])

    async def items() -> AsyncIterator[dict[str, Any] | Exception]:
        item = first
        try:
            while item[0] != "done":
                yield item[1] if item[0] == "error" else {**item[1], "model": served.name}
                item = await queue.get()
        finally:
            cancel.set()  # the client disconnected, or we are done: either way stop generating

    return items()
