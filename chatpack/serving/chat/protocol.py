"""The chat-completions request as ``POST /v1/chat/completions`` reads it.

Its types are :mod:`chatpack.protocol.chat_request`'s (:class:`~chatpack.protocol.chat_request.ChatRequest`, validated
by the pydantic models of :mod:`chatpack.protocol.request_model`): the logged ONNX model carries the same module and
parses its pyfunc rows with it, so ``serve`` and ``mlflow models serve`` accept and refuse the same requests. What
only the route adds: the raw-prompt form is the pyfunc's, not part of OpenAI's chat API.
"""

from __future__ import annotations

from typing import Any

from chatpack.protocol.chat_request import ChatRequest, parse_request
from chatpack.protocol.errors import STREAM_OPTIONS_ALONE, RequestError


def parse_chat(body: Any) -> ChatRequest:
    """A ``/v1/chat/completions`` body as a :class:`ChatRequest`; bad ones raise ``RequestError`` naming the field."""
    chat = parse_request(body)
    if chat.prompt is not None:
        raise RequestError("prompt", "prompt: not a chat-completions field; send 'messages'")
    if body.get("stream_options") is not None and not chat.stream:
        raise RequestError("stream_options", STREAM_OPTIONS_ALONE)
    return chat
