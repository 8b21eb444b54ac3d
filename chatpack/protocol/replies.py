"""OpenAI response objects as plain dicts: ``chat.completion`` and ``chat.completion.chunk``, and the text-completions
``text_completion`` object (whole and as a stream chunk). A choice's ``logprobs`` is null unless the request asked."""

from __future__ import annotations

import time
import uuid
from typing import Any


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(model: str, choices: list[tuple[str | dict[str, Any], str]], prompt_tokens: int,
                    completion_tokens: int, cid: str | None = None,
                    logprobs: list[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object; ``choices`` are (content or whole message, finish_reason) pairs, ``logprobs``
    each choice's logprobs object (None: not asked for)."""
    logprobs = logprobs or [None] * len(choices)
    return {
        "id": cid or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": reply if isinstance(reply, dict) else {"role": "assistant", "content": reply},
             "logprobs": logprobs[i], "finish_reason": reason}
            for i, (reply, reason) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
               usage_: dict[str, int] | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; the last one carries ``finish_reason`` (and ``usage``); ``logprobs`` those of
    the tokens whose text ``delta`` carries."""
    chunk: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_completion(model: str, choices: list[tuple[str, str | None, dict[str, Any] | None]],
                    usage_: dict[str, int] | None, cid: str | None = None, created: int | None = None
                    ) -> dict[str, Any]:
    """A ``text_completion`` object (also each chunk of a streamed one); ``choices`` are (text, finish_reason,
    logprobs) triples, indexed in order."""
    body: dict[str, Any] = {
        "id": cid or f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason}
                    for i, (text, reason, logprobs) in enumerate(choices)],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body
