"""The served model as ``serve`` calls it: the loaded model, with every call noted on the current request.

:class:`ObservedModel` forwards ``predict`` and ``predict_stream`` unchanged and records, on the request's
:class:`~chatpack.serving.observability.request_context.RequestContext`, the model input, the reply text (chat or text
completion), token counts, finish reason and the phases of a streamed reply, read from its chunks alone (so it works for
any model, including one logged with older code): the first chunk (the role) comes once the prompt is templated and
tokenised, the first chunk with text once prefill has produced the first token, the last one carries ``finish_reason``
and ``usage``. Models that know more mark phases themselves (the transformers adapter does, also for whole replies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from chatpack.serving.observability.request_context import current


def observed_replies(flavour: str, payload: Any, call: Callable[[], list[Any]]) -> list[Any]:
    """``call()`` (the model's replies to ``payload``), noted on the current request: the input, the first reply's
    text, token counts and finish reason."""
    context = current()
    if context is None:
        return call()
    context.flavour, context.payload = flavour, payload if isinstance(payload, dict) else None
    context.mark("model")
    replies = call()
    reply = replies[0] if isinstance(replies, list) and replies else None
    if isinstance(reply, dict) and reply.get("choices"):
        choice = reply["choices"][0]
        context.pieces = [_text(choice, "message")]
        context.note_usage(reply.get("usage"), choice.get("finish_reason"))
    return replies


def observed_chunks(flavour: str, payload: Any, chunks: Iterator[Any]) -> Iterator[Any]:
    """``chunks`` (the model's streamed reply to ``payload``), each noted on the current request as it passes."""
    context = current()
    if context is None:
        return chunks
    context.flavour, context.payload, context.streamed = flavour, payload, True
    context.mark("model")
    return _observed(chunks, context)


class ObservedModel:
    """``model`` with its calls noted on the current request; other attributes pass through."""

    def __init__(self, model: Any, flavour: str):
        self.model, self.flavour = model, flavour

    def __getattr__(self, name: str) -> Any:  # metadata, unwrap_python_model, ... of the wrapped model
        return getattr(self.model, name)

    def predict(self, payload: Any, *args: Any, **kwargs: Any) -> Any:
        return observed_replies(self.flavour, payload, lambda: self.model.predict(payload, *args, **kwargs))

    def predict_stream(self, payload: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        context = current()
        chunks = self.model.predict_stream(payload, *args, **kwargs)
        return chunks if context is None else observed_chunks(self.flavour, payload, chunks)


def _observed(chunks: Iterator[Any], context: Any) -> Iterator[Any]:
    try:
        for chunk in chunks:
            if isinstance(chunk, dict) and chunk.get("choices"):
                choice = chunk["choices"][0]
                text = _text(choice, "delta")
                context.mark("tokenised")
                if text:
                    context.mark("first_token")
                    context.pieces.append(text)
                if choice.get("finish_reason") or chunk.get("usage"):
                    context.note_usage(chunk.get("usage"), choice.get("finish_reason"))
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # a closed stream stops generation (the server closes it when the client goes away)


def _text(choice: dict[str, Any], key: str) -> str:
    """A choice's text: ``message``/``delta`` content in chat replies, ``text`` in text completions."""
    return (choice.get(key) or {}).get("content") or choice.get("text") or ""
