"""The ONNX chat model's engine as its callers use it: a small typed interface over
:class:`~chatpack.engine.chat_engine.OnnxChatEngine`.

Two callers, one path. ``serve`` reaches the client through MLflow's public API
(``mlflow.pyfunc.PyFuncModel.unwrap_python_model().engine_client``) and hands it the
:class:`~chatpack.protocol.chat_request.ChatRequest` it parsed once at the HTTP edge; the pyfunc's own ``predict``/
``predict_stream`` (``mlflow models serve``, ``mlflow.pyfunc`` callers) parse their rows into the same request type
and call the same client. Results are typed (:class:`Completion`, :class:`Delta`, :class:`Finish`); OpenAI's reply
and chunk objects are built from them in one place, :mod:`chatpack.protocol.replies`, by either caller.

A served model runs the code it was logged with, so the server and the model may be at different commits: ``serve``
takes the typed path only when the model's client has the server's :data:`ENGINE_CLIENT_VERSION` (bumped whenever
this interface or the request types change), and calls any other model through its pyfunc.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from chatpack.engine.chat_engine import ContextOverflow, OnnxChatEngine, StreamState
from chatpack.engine.guidance import GuidanceError, blame, build
from chatpack.engine.logprobs import TokenLogprob
from chatpack.engine.scheduler import OWNER
from chatpack.engine.tool_calls import ReplyReader
from chatpack.protocol.chat_request import ChatRequest, GenerationOptions
from chatpack.protocol.errors import RequestError

ENGINE_CLIENT_VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True)
class Choice:
    """One whole reply: its text, why it ended (``stop``, ``length``, ``tool_calls``), its tokens' logprobs (None:
    not asked for) and, when the request allowed tool calls, the assistant message the text reads as."""

    text: str
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None
    message: dict[str, Any] | None = None


@dataclass(frozen=True)
class Completion:
    """The whole reply to one request: its ``n`` choices and the token counts (completion tokens summed; cached:
    the most prompt tokens a choice found in a KV row's prefix, as the prompt is counted once)."""

    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed reply as an OpenAI chat delta (``{"content": ...}`` or ``{"tool_calls": [...]}``), with
    the logprobs of the tokens its text came from (``[]``: none new; None: not asked for)."""

    delta: dict[str, Any]
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Finish:
    """The last event of a streamed reply: why it ended, the token counts (cached: the prompt tokens found in a KV
    row's prefix), and the logprobs not yet sent."""

    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0


class EngineClient:
    """Submit a parsed request, stream its pieces, cancel a caller's work, read the engine's state."""

    version = ENGINE_CLIENT_VERSION

    def __init__(self, engine: OnnxChatEngine):
        self.engine = engine

    # -- answering ---------------------------------------------------------------------------------------------
    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The request's prompt tokens (the chat template applied, tools included); a prompt that leaves no room for
        a reply is refused naming its field."""
        if request.messages is not None:
            ids, field = self.engine.encode_chat(request.messages, request.reply_format), "messages"
        else:
            ids, field = self.engine.encode_text(request.prompt or ""), "prompt"
        try:
            self.engine.check_fits(ids)
        except ContextOverflow as exc:
            raise RequestError(field, f"{field}: {exc}; shorten the conversation") from None
        return ids

    def complete(self, request: ChatRequest) -> Completion:
        """The whole reply to ``request`` (its ``n`` choices decoded together, in the running batch)."""
        prompt_ids, options = self.prompt_ids(request), self._options(request)
        choices = [options.for_choice(i) for i in range(request.options.n)]
        results = self._constrained(request, lambda: self.engine.complete_all(prompt_ids, choices))
        calls = _calls_allowed(request)
        return Completion([_choice(r.text, r.finish_reason, r.logprobs, calls) for r in results], len(prompt_ids),
                          sum(r.completion_tokens for r in results),
                          max(getattr(r, "cached_tokens", 0) for r in results))

    def complete_many(self, requests: list[ChatRequest]) -> list[Completion]:
        """The replies to several requests, decoded together; cancelling the calling thread reaches all of them."""
        if len(requests) == 1:
            return [self.complete(requests[0])]
        caller = threading.get_ident()

        def answer(request: ChatRequest) -> Completion:
            OWNER.set(caller)
            return self.complete(request)

        with ThreadPoolExecutor(min(len(requests), self.engine.max_batch)) as pool:
            return list(pool.map(answer, requests))

    def stream(self, request: ChatRequest) -> Iterator[Delta | Finish]:
        """The reply to ``request`` piece by piece, then a :class:`Finish`. Bad requests fail here, at the call;
        closing the iterator stops generation and frees the row."""
        if request.options.n != 1:
            raise RequestError("n", "n: streaming supports n=1 only")
        prompt_ids = self.prompt_ids(request)
        state = StreamState(len(prompt_ids))
        options = self._options(request)
        pieces = self._constrained(request, lambda: self.engine.stream(prompt_ids, options, state))
        return self._events(pieces, state, ReplyReader() if _calls_allowed(request) else None)

    def tokenize(self, text: str) -> list[int]:
        return self.engine.encode_text(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.engine.decode_ids(ids)

    # -- the engine's state ------------------------------------------------------------------------------------
    def cancel(self, thread: int) -> None:
        """Free the rows of every request the executor thread ``thread`` submitted (``serve`` also reads the engine
        of a model logged before this client through it, whose batch may not cancel)."""
        cancel_thread = getattr(self.engine.batch, "cancel_thread", None)
        if cancel_thread is not None:
            cancel_thread(thread)

    def queue_depth(self) -> int:
        """Requests waiting for a row of the batch."""
        return int(getattr(self.engine.batch, "waiting", 0) or 0)

    def stats(self) -> dict[str, Any]:
        """What ``/health`` reports of the engine: threads, the KV rows, the batch's settings and counters."""
        engine, kv = self.engine, self.engine.kv
        return {"threads": engine.threads, "parallel": kv.rows, "row_tokens": kv.row_tokens,
                "kv_bytes_per_token": kv.bytes_per_token,
                "kv_mb_per_row": round(kv.row_tokens * kv.bytes_per_token / 2**20, 1),
                "kv_mb_max": round(min(kv.cache_bytes, engine.kv_budget) / 2**20),
                "kv_mb_budget": round(engine.kv_budget / 2**20), "kv_budget_from": engine.kv_budget_reason,
                "kv_mb_held": round(kv.resident_tokens * kv.bytes_per_token / 2**20, 1),
                "speculate": engine.batch.speculate, "prefix_reuse": engine.batch.reuse,
                "even_steps": engine.batch.pad_odd,
                # (the engine of a model logged before these settings has none of them)
                "reuse_decoded": getattr(engine.batch, "reuse_decoded", False),
                "paired_passes": getattr(kv, "paired", False), "batch": dict(engine.stats)}

    # -- helpers -----------------------------------------------------------------------------------------------
    def _options(self, request: ChatRequest) -> GenerationOptions:
        """The request's options with its decoding constraint, if it has one."""
        return dataclasses.replace(request.options, guidance=build(request.reply_format))

    def _constrained(self, request: ChatRequest, generate: Callable[[], T]) -> T:
        """``generate()``, with a constraint that does not compile reported as a bad request naming its field."""
        try:
            return generate()
        except GuidanceError as exc:
            param, message = blame(request.reply_format, exc, self.engine.grammars.check)
            raise RequestError(param, message) from None

    @staticmethod
    def _events(pieces: Iterator[str], state: StreamState, reader: ReplyReader | None) -> Iterator[Delta | Finish]:
        taken = _Taken(state)
        try:
            for piece in pieces:
                for delta in reader.feed(piece) if reader else [{"content": piece}]:
                    yield Delta(delta, taken.new())
            for delta in reader.close() if reader else []:
                yield Delta(delta, taken.new())
            yield Finish(_finish_reason(state.finish_reason, reader), state.prompt_tokens,
                         state.completion_tokens, taken.new(last=True), getattr(state, "cached_tokens", 0))
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a closed stream stops generation


class _Taken:
    """The logprob entries of a streaming reply not yet sent (``state.logprobs`` grows as text is emitted); None
    throughout when the request did not ask for logprobs."""

    def __init__(self, state: StreamState):
        self.state, self.sent = state, 0

    def new(self, last: bool = False) -> list[TokenLogprob] | None:
        entries = self.state.logprobs
        if entries is None:
            return None
        if not last and len(entries) == self.sent:
            return []
        out, self.sent = entries[self.sent:], len(entries)
        return out


def _calls_allowed(request: ChatRequest) -> bool:
    return request.reply_format is not None and request.reply_format.calls_allowed


def _choice(text: str, reason: str, logprobs: list[TokenLogprob] | None, calls: bool) -> Choice:
    """A whole reply; one that may hold tool calls is read as a message (and ``tool_calls`` when it ended by itself
    with complete calls)."""
    if not calls:
        return Choice(text, reason, logprobs)
    reader = ReplyReader()
    reader.feed(text)
    return Choice(text, _finish_reason(reason, reader) or reason, logprobs, reader.message())


def _finish_reason(reason: str | None, reader: ReplyReader | None) -> str | None:
    """``tool_calls`` for a reply of complete calls that ended by itself; the decode step's reason otherwise."""
    return "tool_calls" if reader is not None and reader.complete_calls and reason == "stop" else reason
