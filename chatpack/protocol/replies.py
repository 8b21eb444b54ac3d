"""OpenAI chat-completions response objects (``chat.completion`` and ``chat.completion.chunk``) as plain dicts."""

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
                    completion_tokens: int, cid: str | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object; ``choices`` are (content or whole message, finish_reason) pairs."""
    return {
        "id": cid or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": reply if isinstance(reply, dict) else {"role": "assistant", "content": reply},
             "finish_reason": reason}
            for i, (reply, reason) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
               usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; the last one carries ``finish_reason`` (and ``usage``)."""
    chunk: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk
