"""``POST /v1/completions``: OpenAI's text completions over the served model's raw-prompt form.

Each prompt (a string, or a list: one choice per prompt and ``n``, ``index`` in that order) is sent to the pyfunc as a
raw-prompt row with ``"text_completion": true`` (:mod:`chatpack.serving.completion_request`), which answers with a
``text_completion`` object (text, ``finish_reason``, legacy ``logprobs``, ``usage``); this route merges those into one
reply under one ``cmpl-`` id, with the served model's name and summed usage. ``"stream": true`` answers Server-Sent
Events of ``text_completion`` chunks, the choices one after another, ending with ``data: [DONE]``; with
``stream_options.include_usage`` a last chunk with no choices carries ``usage``. With ``n`` > 1 and a ``seed``,
choice i samples with ``seed + i``, streamed or not (the same choices either way).

Only models that declare ``text_completion`` in their features (ONNX models logged by chatpack) are asked; others
are refused naming ``prompt`` rather than answered without ``finish_reason`` and ``usage``. One request is admitted
once, whatever its number of prompts; its prompts run one after another.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.protocol.chat_request import choice_seed
from chatpack.protocol.errors import RequestError
from chatpack.protocol.replies import text_completion, usage
from chatpack.serving.chat_payload import model_features
from chatpack.serving.completion_request import CompletionRequest, parse_completion
from chatpack.serving.generation import as_error, data_events, predicted, read_body, refused_if_busy, stream_items
from chatpack.serving.served_model import ServedModel

ROUTE = "/v1/completions"


def check_completions(served: ServedModel) -> None:
    if "text_completion" not in model_features(served):
        flavour = getattr(served, "flavour", None) or "pyfunc"
        raise RequestError("prompt", f"prompt: this model ({flavour} flavour) does not answer text completions; "
                                     "/v1/completions needs an ONNX model logged by chatpack (see README, "
                                     "Text completions); use /v1/chat/completions")


def merged(name: str, replies: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-prompt ``text_completion`` replies as one, choices renumbered in order, usage summed."""
    choices = [(c["text"], c["finish_reason"], c.get("logprobs")) for r in replies for c in r["choices"]]
    prompt_tokens = sum(r["usage"]["prompt_tokens"] for r in replies)
    completion_tokens = sum(r["usage"]["completion_tokens"] for r in replies)
    return text_completion(name, choices, usage(prompt_tokens, completion_tokens))


def choice_row(row: dict[str, Any], index: int) -> dict[str, Any]:
    """The model row of choice ``index`` of a streamed prompt (streams are asked one choice at a time): a seeded row
    gets that choice's seed, as the whole reply's choices get theirs (:func:`choice_seed`)."""
    return row if row.get("seed") is None else {**row, "seed": choice_seed(row["seed"], index)}


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /v1/completions`` to ``app``."""

    @app.post(ROUTE)
    async def completions(request: Request):
        body, refused = await read_body(request, served)
        if refused is not None:
            return refused
        try:
            completion = parse_completion(body)
            check_completions(served)
        except RequestError as exc:
            return as_error(exc)
        if (busy := refused_if_busy(served)) is not None:
            return busy
        if completion.stream:
            return await _stream(completion)
        try:
            rows = [{**row, "n": completion.n} if completion.n > 1 else row for row in completion.rows]
            replies = await predicted(served, request, lambda: served.predict(rows))
        except Exception as exc:
            return as_error(exc)
        finally:
            served.release()
        return JSONResponse(merged(served.name, replies))

    async def _stream(completion: CompletionRequest):
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunks() -> Iterator[dict[str, Any]]:
            """Each prompt's n choices streamed one after another, renumbered; usage summed for the last chunk."""
            totals, index = [0, 0], 0
            for row in completion.rows:
                for choice in range(completion.n):
                    produced = served.model.predict_stream(choice_row(row, choice))
                    try:
                        for chunk in produced:
                            used = chunk.pop("usage", None)
                            if used:
                                totals[0] += used["prompt_tokens"]
                                totals[1] += used["completion_tokens"]
                            yield {**chunk, "id": cid, "created": created,
                                   "choices": [{**chunk["choices"][0], "index": index}]}
                    finally:
                        produced.close()  # ends generation and frees the model
                    index += 1
            if completion.include_usage:
                yield text_completion(served.name, [], usage(*totals), cid, created)

        items = await stream_items(served, chunks)
        return items if isinstance(items, JSONResponse) else data_events(items)
