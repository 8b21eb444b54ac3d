"""The one client every server benchmark uses: OpenAI chat completions over HTTP, streamed (SSE) or whole.

:func:`chat` never raises for a failed request: it returns a :class:`Reply` whose ``failure`` names the kind
(``http_<status>``, ``timeout``, ``connection``, ``broken_stream``, ``bad_reply``), so a benchmark counts failures
instead of assuming there were none. Time to first token is the moment the first non-empty piece of reply text
reaches this code (for a whole reply: when its body has been read). Standard library only.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Reply:
    ok: bool = False
    failure: str | None = None  # None when ok
    detail: str = ""
    status: int | None = None
    streamed: bool = False
    start: float = 0.0  # time.perf_counter() when the request was sent
    ttft_s: float | None = None  # to the first non-empty text piece
    total_s: float = 0.0
    text: str = ""
    pieces: int = 0  # non-empty text pieces received
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # as the server reports it (usage)
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _fail(reply: Reply, kind: str, detail: str) -> Reply:
    reply.ok, reply.failure, reply.detail = False, kind, detail[:300]
    reply.total_s = time.perf_counter() - reply.start
    return reply


def _usage(reply: Reply, usage: Any) -> None:
    if isinstance(usage, dict):
        reply.prompt_tokens = usage.get("prompt_tokens", reply.prompt_tokens)
        reply.completion_tokens = usage.get("completion_tokens", reply.completion_tokens)


def parse_whole(reply: Reply, body: bytes) -> Reply:
    """A non-streamed chat completion (an object, or the one-element list ``mlflow models serve`` answers with)."""
    try:
        data = json.loads(body)
        data = data[0] if isinstance(data, list) else data
        choice = data["choices"][0]
        reply.text = choice["message"]["content"] or ""
        if choice["message"].get("tool_calls"):
            reply.extra["tool_calls"] = choice["message"]["tool_calls"]
        reply.finish_reason = choice.get("finish_reason")
        _usage(reply, data.get("usage"))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return _fail(reply, "bad_reply", f"{type(exc).__name__}: {body[:200]!r}")
    now = time.perf_counter()
    reply.total_s = now - reply.start
    if reply.text:
        reply.ttft_s, reply.pieces = reply.total_s, 1
    reply.ok = True
    return reply


def _merge_call(reply: Reply, delta: dict[str, Any]) -> None:
    """A streamed tool-call delta into ``reply.extra["tool_calls"]`` (name and arguments pieces joined per index);
    ``extra["first_call_s"]``: when the first one arrived."""
    calls = reply.extra.setdefault("tool_calls", [])
    reply.extra.setdefault("first_call_s", time.perf_counter() - reply.start)
    index = delta.get("index", len(calls))
    while len(calls) <= index:
        calls.append({"type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        calls[index]["id"] = delta["id"]
    for key in ("name", "arguments"):
        calls[index]["function"][key] += (delta.get("function") or {}).get(key) or ""


def parse_stream(reply: Reply, lines) -> Reply:
    """Server-sent events: ``data: {chunk}`` lines, ended by ``data: [DONE]``. A stream that ends early, carries an
    error event, or holds a line that is not JSON is a ``broken_stream``. Tool-call deltas are joined into
    ``reply.extra["tool_calls"]`` (a whole reply's ``message.tool_calls`` go there too)."""
    parts: list[str] = []
    done = False
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else raw.strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            return _fail(reply, "broken_stream", f"not JSON: {data[:200]}")
        if "error" in chunk:
            return _fail(reply, "broken_stream", f"error event: {json.dumps(chunk['error'])[:200]}")
        _usage(reply, chunk.get("usage"))
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if reply.ttft_s is None:
                    reply.ttft_s = time.perf_counter() - reply.start
                reply.pieces += 1
                parts.append(piece)
            for call in (choice.get("delta") or {}).get("tool_calls") or []:
                _merge_call(reply, call)
            if choice.get("finish_reason"):
                reply.finish_reason = choice["finish_reason"]
    reply.text = "".join(parts)
    if not done:
        return _fail(reply, "broken_stream", "stream ended without [DONE]")
    reply.total_s = time.perf_counter() - reply.start
    reply.ok = True
    return reply


def _lines(resp: http.client.HTTPResponse, deadline: float):
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("request deadline passed")
        line = resp.readline()
        if not line:
            return
        yield line


def chat(url: str, body: dict[str, Any], timeout: float = 120.0) -> Reply:
    """POST ``body`` to the chat-completions ``url``; streamed when ``body["stream"]`` is true."""
    parts = urlsplit(url)
    streamed = bool(body.get("stream"))
    reply = Reply(streamed=streamed)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    deadline = time.monotonic() + timeout
    reply.start = time.perf_counter()
    stage = "connection"
    try:
        conn.request("POST", parts.path or "/", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json",
                              "Accept": "text/event-stream" if streamed else "application/json"})
        resp = conn.getresponse()
        reply.status = resp.status
        if resp.status != 200:
            return _fail(reply, f"http_{resp.status}", resp.read().decode("utf-8", "replace"))
        stage = "broken_stream" if streamed else "connection"
        if streamed:
            return parse_stream(reply, _lines(resp, deadline))
        return parse_whole(reply, resp.read())
    except (TimeoutError, socket.timeout) as exc:
        return _fail(reply, "timeout", str(exc) or "timed out")
    except (http.client.HTTPException, ConnectionError, OSError) as exc:
        return _fail(reply, stage, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def get_json(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """A small helper for side routes (llama-server's /tokenize, /props): JSON in, JSON out; raises on failure."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())
