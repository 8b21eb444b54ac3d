"""Text completions on the served model: what ``/v1/completions`` asks of it and how it merges the answers.

Each prompt (a string, or a list: one choice per prompt and ``n``, ``index`` in that order) is a raw-prompt
:class:`~chatpack.protocol.chat_request.ChatRequest` with ``text_completion`` set, which the model answers with a
``text_completion`` object (text, ``finish_reason``, legacy ``logprobs``, ``usage``); the replies are merged into
one under one ``cmpl-`` id, with summed usage (:func:`merged`). A stream runs the choices one after another
(:func:`streamed_chunks`), renumbered, and with ``stream_options.include_usage`` ends with a chunk of no choices that
carries ``usage``. With ``n`` > 1 and a ``seed``, choice i samples with ``seed + i``, streamed or not.

Only models that declare ``text_completion`` in their features (ONNX models logged by chatpack) are asked; others
are refused naming ``prompt`` (:func:`check_completions`) rather than answered without ``finish_reason`` and
``usage``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from chatpack.protocol.chat_request import ChatRequest
from chatpack.protocol.errors import RequestError
from chatpack.protocol.replies import text_completion, text_completion_id, usage
from chatpack.serving.chat.serving import closing, model_features
from chatpack.serving.completions.protocol import CompletionRequest
from chatpack.serving.served_model import ServedModel


def check_completions(completion: CompletionRequest, served: ServedModel) -> CompletionRequest:
    if "text_completion" not in model_features(served):
        flavour = getattr(served, "flavour", None) or "pyfunc"
        raise RequestError("prompt", f"prompt: this model ({flavour} flavour) does not answer text completions; "
                                     "/v1/completions needs an ONNX model logged by chatpack (see "
                                     "docs/serving/completions.md); use /v1/chat/completions")
    return completion


def with_n(request: ChatRequest, n: int) -> ChatRequest:
    return request if n == 1 else dataclasses.replace(request, options=dataclasses.replace(request.options, n=n))


def choice_request(request: ChatRequest, index: int) -> ChatRequest:
    """Choice ``index`` of a streamed prompt (streams are asked one choice at a time), with that choice's seed, as a
    whole reply's choices get theirs (:meth:`~chatpack.protocol.chat_request.GenerationOptions.for_choice`)."""
    return dataclasses.replace(request, options=request.options.for_choice(index))


def merged(served: ServedModel, completion: CompletionRequest) -> dict[str, Any]:
    """The per-prompt ``text_completion`` replies as one, choices renumbered in order, usage summed."""
    replies = served.replies([with_n(r, completion.n) for r in completion.requests])
    choices = [(c["text"], c["finish_reason"], c.get("logprobs")) for r in replies for c in r["choices"]]
    prompt_tokens = sum(r["usage"]["prompt_tokens"] for r in replies)
    completion_tokens = sum(r["usage"]["completion_tokens"] for r in replies)
    return text_completion(served.name, choices, usage(prompt_tokens, completion_tokens))


def streamed_chunks(served: ServedModel, completion: CompletionRequest) -> Iterator[dict[str, Any]]:
    """Each prompt's n choices streamed one after another, renumbered; usage summed for the last chunk (each prompt's
    tokens counted once, as in a whole reply), and ``"usage": null`` on the others."""
    cid, created = text_completion_id(), int(time.time())
    totals, index = [0, 0], 0
    for request in completion.requests:
        for choice in range(completion.n):
            for chunk in closing(served.stream(choice_request(request, choice))):  # closed: generation ends
                used = chunk.pop("usage", None)
                if used:
                    totals[0] += used["prompt_tokens"] if choice == 0 else 0  # a prompt counts once
                    totals[1] += used["completion_tokens"]
                yield {**chunk, "id": cid, "created": created,
                       "choices": [{**chunk["choices"][0], "index": index}],
                       **({"usage": None} if completion.include_usage else {})}
            index += 1
    if completion.include_usage:
        yield text_completion(served.name, [], usage(*totals), cid, created)
