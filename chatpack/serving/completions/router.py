"""``POST /v1/completions``: OpenAI's text completions over the served model's raw-prompt form.

The body is parsed once (:func:`~chatpack.serving.completions.protocol.parse_completion`), checked and admitted
(:func:`~chatpack.serving.http.open_request`; one request is admitted once, whatever its number of prompts), then
answered whole (:func:`~chatpack.serving.completions.serving.merged`) or streamed as Server-Sent Events of
``text_completion`` chunks ending with ``data: [DONE]`` (:func:`~chatpack.serving.completions.serving.
streamed_chunks`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.serving.completions.protocol import parse_completion
from chatpack.serving.completions.serving import check_completions, merged, streamed_chunks
from chatpack.serving.http import data_events, open_request
from chatpack.serving.model_calls import stream_items, whole_reply
from chatpack.serving.served_model import ServedModel

ROUTE = "/v1/completions"


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /v1/completions`` to ``app``, answered by ``served``."""

    @app.post(ROUTE)
    async def completions(request: Request):
        completion, refused = await open_request(request, served,
                                                 lambda body: check_completions(parse_completion(body), served))
        if refused is not None:
            return refused
        if completion.stream:
            items = await stream_items(served, lambda: streamed_chunks(served, completion))
            return items if isinstance(items, JSONResponse) else data_events(items)
        reply = await whole_reply(served, lambda: merged(served, completion), request)
        return reply if isinstance(reply, JSONResponse) else JSONResponse(reply)
