"""What the served model can honour of a parsed chat request, for every route that runs one
(:func:`check_supported`): constrained decoding (structured outputs, tool calls) and logprobs, which only ONNX models
logged by chatpack implement (:data:`FEATURES_KEY`); any other model would ignore such a field, so it is refused by
name instead.

The chat route calls it; ``/v1/responses`` (and every later API surface) translates its request into a
:class:`~chatpack.protocol.chat_request.ChatRequest` first and calls it too, so every route refuses the same things.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from chatpack.flavours.onnx_chat.pyfunc_model import FEATURES_KEY
from chatpack.protocol.chat_request import ChatRequest
from chatpack.protocol.errors import RequestError
from chatpack.protocol.reply_format import STRUCTURED_OUTPUTS_KEY, demanded_field
from chatpack.serving.served_model import ServedModel


def check_supported(chat: ChatRequest, served: ServedModel) -> ChatRequest:
    """Refuse, naming the field, what needs constrained decoding when the model does not implement it (the
    transformers flavour; ONNX models logged before it): such a model would ignore the field, not honour it."""
    field = demanded_field(chat.reply_format, chat.messages)
    meta = getattr(getattr(served.model, "metadata", None), "metadata", None) or {}
    if field is not None and not meta.get(STRUCTURED_OUTPUTS_KEY):
        what, flavour = "tool turns" if field == "messages" else "it", getattr(served, "flavour", None) or "pyfunc"
        raise RequestError(field, f"{field}: this model ({flavour} flavour) does not implement {what}; structured "
                                  "outputs and tool calls need an ONNX model logged by chatpack with constrained "
                                  "decoding (see docs/serving/chat.md)")
    if chat.options.logprobs is not None and "logprobs" not in model_features(served):
        raise RequestError("logprobs", f"logprobs: this model ({_flavour(served)} flavour) does not report them; "
                                       "logprobs need an ONNX model logged by chatpack with logprobs support (see "
                                       "docs/serving/chat.md)")
    return chat


def choice_chunks(served: ServedModel, chat: ChatRequest) -> Iterator[dict[str, Any]]:
    """The model's ``chat.completion.chunk`` stream for ``chat``; with ``n`` > 1 its choices one after another (each
    streamed as a request of its own, choice i with ``seed + i`` as in a whole reply), renumbered under one id, and
    the usage counted as a whole reply counts it (the prompt once, the choices' tokens summed). Closing this closes
    the choice being streamed (which ends its generation)."""
    if chat.options.n == 1:
        yield from closing(served.stream(chat))
        return
    first: dict[str, Any] | None = None
    completion_tokens = 0
    for index in range(chat.options.n):
        options = dataclasses.replace(chat.options.for_choice(index), n=1)
        for chunk in closing(served.stream(dataclasses.replace(chat, options=options))):
            first = first or chunk
            used = chunk.get("usage")
            if used:
                completion_tokens += used["completion_tokens"]
                chunk["usage"] = {**used, "completion_tokens": completion_tokens,
                                  "total_tokens": used["prompt_tokens"] + completion_tokens}
            yield {**chunk, "id": first["id"], "created": first["created"],
                   "choices": [{**c, "index": index} for c in chunk["choices"]]}


def closing(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``chunks``, closed when this is closed or ends (closing a model's stream ends its generation)."""
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def openai_chunks(chunks: Iterator[dict[str, Any]], include_usage: bool) -> Iterator[dict[str, Any]]:
    """The model's ``chat.completion.chunk`` stream as OpenAI sends it: the model's last chunk carries the usage;
    OpenAI sends none unless ``stream_options.include_usage`` is set, and then ``"usage": null`` on every chunk and
    the usage in one more chunk with no choices. Closing this closes ``chunks`` (which ends the generation)."""
    counts, last = None, None
    for chunk in closing(chunks):
        counts = chunk.pop("usage", None) or counts
        last = chunk
        yield {**chunk, "usage": None} if include_usage else chunk
    if include_usage and last is not None and counts is not None:
        yield {"id": last["id"], "object": "chat.completion.chunk", "created": last["created"], "model": last["model"],
               "choices": [], "usage": counts}


def model_features(served: ServedModel) -> set[str]:
    """What the served model declares in its :data:`FEATURES_KEY` metadata (``logprobs``, ``text_completion``)."""
    meta = getattr(getattr(served.model, "metadata", None), "metadata", None) or {}
    return {f for f in str(meta.get(FEATURES_KEY) or "").split(",") if f}


def _flavour(served: ServedModel) -> str:
    return getattr(served, "flavour", None) or "pyfunc"
