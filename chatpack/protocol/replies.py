"""OpenAI reply objects as plain dicts, built in this one place: ``chat.completion`` and ``chat.completion.chunk``, the
text-completions ``text_completion`` object (whole and as a stream chunk), their ids, ``usage`` and ``logprobs``.

The typed results of the ONNX engine client (:mod:`chatpack.flavours.onnx_chat.engine_client`: a ``Completion`` of
``Choice``s, a stream of ``Delta``s ending with a ``Finish``) become these objects here (:func:`chat_reply`,
:func:`chat_chunks`, :func:`text_reply`, :func:`text_chunks`), whether ``serve`` called the client with a request it
parsed or the pyfunc did for ``mlflow models serve``; the results are read by attribute, so a model loaded with its
own copy of the code is read the same way. A choice's ``logprobs`` is null unless the request asked; a token's entry
(``token``, ``logprob``, ``top`` alternatives) becomes OpenAI's chat shape or the legacy completions shape."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any


def completion_id() -> str:
    """A ``chat.completion`` id (every chat reply's id is made here)."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def text_completion_id() -> str:
    """A ``text_completion`` id (every text completion's id is made here)."""
    return f"cmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's ``usage``; with ``cached_tokens`` (the engine's reused prompt prefix, part of ``prompt_tokens``) also
    ``prompt_tokens_details``."""
    counts: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        counts["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return counts


def chat_completion(model: str, choices: list[tuple[str | dict[str, Any], str]], prompt_tokens: int,
                    completion_tokens: int, cid: str | None = None,
                    logprobs: list[dict[str, Any] | None] | None = None,
                    cached_tokens: int | None = None) -> dict[str, Any]:
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
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
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
        "id": cid or text_completion_id(),
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason}
                    for i, (text, reason, logprobs) in enumerate(choices)],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def reply_chunks(reply: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """A whole ``chat.completion`` (of a model that does not stream) as role, content and finish chunks."""
    choice = reply["choices"][0]
    cid, created = reply.get("id", "chatcmpl-0"), int(reply.get("created", time.time()))
    return [chat_chunk(cid, model, created, {"role": "assistant", "content": ""}),
            chat_chunk(cid, model, created, {"content": choice["message"]["content"] or ""}),
            chat_chunk(cid, model, created, {}, choice.get("finish_reason", "stop"), reply.get("usage"))]


def chat_logprobs(entries: list[Any] | None) -> dict[str, Any] | None:
    """OpenAI's chat ``logprobs`` object (``content`` entries with ``token``, ``logprob``, ``bytes``,
    ``top_logprobs``; ``refusal`` null), or None when none were asked for."""
    if entries is None:
        return None

    def one(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}


def legacy_logprobs(entries: list[Any] | None, offset: int = 0) -> dict[str, Any] | None:
    """The text-completions ``logprobs`` object (``tokens``, ``token_logprobs``, ``top_logprobs`` as one
    {token: logprob} dict per token, ``text_offset`` counted from ``offset`` in the completion's text)."""
    if entries is None:
        return None
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}


def chat_reply(model: str, completion: Any) -> dict[str, Any]:
    """A ``chat.completion`` from an engine ``Completion``."""
    return chat_completion(model, [(c.message or c.text, c.finish_reason) for c in completion.choices],
                           completion.prompt_tokens, completion.completion_tokens,
                           logprobs=[chat_logprobs(c.logprobs) for c in completion.choices],
                           cached_tokens=getattr(completion, "cached_tokens", None))


def text_reply(model: str, completion: Any) -> dict[str, Any]:
    """A ``text_completion`` from an engine ``Completion`` (legacy logprobs)."""
    return text_completion(model, [(c.text, c.finish_reason, legacy_logprobs(c.logprobs))
                                   for c in completion.choices],
                           usage(completion.prompt_tokens, completion.completion_tokens))


def chat_chunks(model: str, events: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """``chat.completion.chunk`` dicts from an engine stream: the role first, a chunk per ``Delta``, and the last
    one (``finish_reason``, ``usage``, the remaining logprobs) from its ``Finish``."""
    cid, created = completion_id(), int(time.time())
    yield chat_chunk(cid, model, created, {"role": "assistant", "content": ""})
    for event in events:
        if hasattr(event, "delta"):
            yield chat_chunk(cid, model, created, event.delta, logprobs=chat_logprobs(event.logprobs))
        else:
            yield chat_chunk(cid, model, created, {}, event.finish_reason,
                             usage(event.prompt_tokens, event.completion_tokens, getattr(event, "cached_tokens", None)),
                             chat_logprobs(event.logprobs))


def text_chunks(model: str, events: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """``text_completion`` chunks from an engine stream (legacy logprobs, offsets into the whole text); the last one
    carries ``finish_reason`` and ``usage``."""
    cid, created, offset = text_completion_id(), int(time.time()), 0
    for event in events:
        if hasattr(event, "delta"):
            piece = event.delta.get("content") or ""
            yield text_completion(model, [(piece, None, legacy_logprobs(event.logprobs, offset))], None, cid, created)
            offset += len(piece)
        else:
            yield text_completion(model, [("", event.finish_reason or "length",
                                           legacy_logprobs(event.logprobs, offset))],
                                  usage(event.prompt_tokens, event.completion_tokens), cid, created)
