"""What ``serve`` learns about one request while answering it: timings, options, token counts, reply.

The HTTP middleware (:mod:`chatpack.serving.observability.middleware`) opens a :class:`RequestContext` per request and
makes it the current one (a context variable). The worker threads that call the model see it too, because the server's
executor runs every call in a copy of the submitting task's context (:class:`ContextExecutor`); so the model wrapper
(:mod:`chatpack.serving.observability.observed_model`) and the transformers adapter fill it in without any parameter
passing, and the middleware turns it into a trace and metrics once the response is sent.
"""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("chatpack_request", default=None)
PHASES = ("model", "tokenised", "first_token")  # marks between start and end, in order


@dataclass
class RequestContext:
    """One request, as the server saw it. Times are ``time.time_ns()`` (spans) and ``perf_counter`` (metrics)."""

    route: str
    method: str
    start_ns: int = field(default_factory=time.time_ns)
    start_perf: float = field(default_factory=time.perf_counter)
    marks: dict[str, tuple[int, float]] = field(default_factory=dict)  # phase -> (ns, perf)
    end_ns: int | None = None
    end_perf: float | None = None
    body: bytes = b""  # the request body as received (bounded: see the middleware)
    status: int | None = None
    error: str | None = None  # the error message sent, for a failed request
    flavour: str | None = None
    payload: dict[str, Any] | None = None  # the model input (messages + the options the caller set)
    streamed: bool = False
    pieces: list[str] = field(default_factory=list)  # reply text
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark(self, phase: str) -> None:
        """Record when ``phase`` was reached (the first time only)."""
        with self._lock:
            self.marks.setdefault(phase, (time.time_ns(), time.perf_counter()))

    def finish(self, status: int) -> None:
        with self._lock:
            self.status = status
            self.end_ns, self.end_perf = time.time_ns(), time.perf_counter()

    def note_usage(self, usage: dict[str, Any] | None, finish_reason: str | None) -> None:
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
        self.finish_reason = finish_reason or self.finish_reason

    @property
    def reply_text(self) -> str:
        return "".join(self.pieces)

    def seconds_to(self, phase: str) -> float | None:
        """Seconds from the request's arrival to ``phase`` (None if it was not reached)."""
        mark = self.marks.get(phase)
        return None if mark is None else mark[1] - self.start_perf

    @property
    def seconds(self) -> float:
        return (self.end_perf or time.perf_counter()) - self.start_perf


def current() -> RequestContext | None:
    return _CURRENT.get()


def begin(context: RequestContext) -> contextvars.Token:
    return _CURRENT.set(context)


def end(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


def mark(phase: str) -> None:
    """Mark ``phase`` on the current request, if there is one (a model called outside ``serve`` has none)."""
    context = _CURRENT.get()
    if context is not None:
        context.mark(phase)


class ContextExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in a copy of the submitter's context (what ``asyncio.to_thread`` does), so a
    request's :class:`RequestContext` reaches the thread that generates its reply."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
