"""The onnxruntime-genai chat model as an MLflow ``PythonModel`` (logged from code: no pickle).

Input: OpenAI chat-completions requests (``messages`` + options) or the raw-prompt form (``prompt``: a string already
in the model's chat format); one reply per input row. ``predict`` answers chat rows with ``chat.completion`` dicts and
prompt rows with the generated string; ``predict_stream`` yields ``chat.completion.chunk`` dicts (prompt form: strings).
A prompt row that sets ``"text_completion": true`` is answered with an OpenAI ``text_completion`` object instead
(``choices`` with ``text``, ``finish_reason`` and legacy-shaped ``logprobs``; ``usage``), streamed as
``text_completion`` chunks (the last one carries ``finish_reason`` and ``usage``): what ``serve``'s
``/v1/completions`` wraps. ``logprobs``/``top_logprobs`` (both forms) report each token's log-probability under the
model's own distribution (:mod:`chatpack.engine.logprobs`). With ``n`` > 1 and a ``seed``, choice i samples with
``seed + i`` (as vLLM does): distinct samples, the same set again for the same request.
Bad requests raise :class:`~chatpack.protocol.errors.RequestError`, an ``MlflowException`` (HTTP 400 when served) whose
``param`` names the field.

Structured outputs and tool calls: ``response_format`` and ``tools``/``tool_choice`` become a decoding constraint
(:mod:`chatpack.engine.guidance`), so a reply that ends with ``finish_reason`` ``stop`` parses, and a reply of tool
calls (``finish_reason`` ``tool_calls``) names listed functions with arguments valid against their parameters.
A constraint that cannot be compiled is a bad request naming the field it came from.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import mlflow

from chatpack.engine.chat_engine import ContextOverflow, OnnxChatEngine, StreamState
from chatpack.engine.guidance import GuidanceError, blame, build
from chatpack.engine.logprobs import TokenLogprob, chat_logprobs, legacy_logprobs
from chatpack.engine.scheduler import OWNER
from chatpack.engine.tool_calls import ReplyReader
from chatpack.protocol.chat_request import ChatRequest, GenerationOptions, parse_request
from chatpack.protocol.errors import RequestError
from chatpack.protocol.replies import chat_chunk, chat_completion, completion_id, text_completion, usage

ONNX_ARTIFACT_KEY = "onnx_model"
# What the model's logging and the server agree on with this class:
CONCURRENCY_KEY = "chatpack_concurrency"  # model metadata; "batched": safe to call from many threads at once
THREADS_CONFIG_KEY = "threads"  # model_config: the engine's intra-op threads (0 or unset: onnxruntime's default)
# model_config: the continuous batch's shape (declared when logged, so that ``serve`` may override them at load time)
# (compile_timeout_s: the longest a request's constraint may take to compile, else 400 naming the field;
# reuse_decoded: the next turn reuses a reply's keys/values as decoded, inexact, off by default)
ENGINE_CONFIG = {"parallel": 8, "kv_cache_mb": 0, "speculate": 0, "compile_timeout_s": 5.0, "reuse_decoded": False}
FEATURES_KEY = "chatpack_features"  # model metadata: what this code implements beyond the chat basics (FEATURES)
FEATURES = ("logprobs", "text_completion")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k")
T = TypeVar("T")


def _config_value(value: Any, default: Any) -> Any:
    """A model_config value as its default's type (a bool also from "true"/"false", as YAML or a CLI gives it)."""
    if value is None:
        return default
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")
    return type(default)(value)


def rows_of(model_input: Any) -> list[dict[str, Any]]:
    """The request rows in whatever form pyfunc hands them over: DataFrame, dict, or list of dicts."""
    rows: list[dict[str, Any]] | None = None
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        rows = model_input
    if rows == [] or rows == [{}]:
        raise RequestError("messages", "messages: required (a non-empty list of {role, content} objects)")
    if rows is not None:
        return rows
    raise RequestError(None, f"request: expected a chat request object or a list of them, got "
                             f"{type(model_input).__name__}")


class OnnxChatModel(mlflow.pyfunc.PythonModel):
    """Chat completions over an onnxruntime-genai model folder logged as the artifact ``onnx_model``."""

    def load_context(self, context) -> None:
        config = dict(context.model_config or {})
        self.model_name = str(config.get("source_model", "onnx-chat"))
        defaults = {k: config[k] for k in GENERATION_KEYS if config.get(k) is not None}
        threads = config.get(THREADS_CONFIG_KEY)  # set at load time: load_model(uri, model_config={"threads": 2})
        engine = {key: _config_value(config.get(key), value) for key, value in ENGINE_CONFIG.items()}
        self.engine = OnnxChatEngine(context.artifacts[ONNX_ARTIFACT_KEY], defaults, max_batch=engine["parallel"],
                                     threads=int(threads) if threads else None, kv_cache_mb=engine["kv_cache_mb"],
                                     speculate=engine["speculate"], compile_seconds=engine["compile_timeout_s"],
                                     reuse_decoded=engine["reuse_decoded"])

    def predict(self, context, model_input, params=None) -> list[Any]:
        requests = [parse_request(row) for row in rows_of(model_input)]  # validate every row before generating
        if len(requests) == 1:
            return [self._answer(requests[0])]
        caller = threading.get_ident()

        def answer(request: ChatRequest) -> Any:
            OWNER.set(caller)  # cancelling the caller's thread reaches this row's work too
            return self._answer(request)

        with ThreadPoolExecutor(min(len(requests), self.engine.max_batch)) as pool:  # rows decode together
            return list(pool.map(answer, requests))

    def predict_stream(self, context, model_input, params=None) -> Iterator[Any]:
        rows = rows_of(model_input)
        if len(rows) != 1:
            raise RequestError(None, f"request: streaming takes one request, got {len(rows)}")
        request = parse_request(rows[0])
        if request.options.n != 1:
            raise RequestError("n", "n: streaming supports n=1 only")
        prompt_ids = self._prompt_ids(request)
        state = StreamState(len(prompt_ids))
        options = self._options(request)
        pieces = self._constrained(request, lambda: self.engine.stream(prompt_ids, options, state))
        if request.prompt is not None:
            yield from (self._completion_chunks(pieces, state) if request.text_completion else pieces)
            return
        cid, created = completion_id(), int(time.time())
        reader = ReplyReader() if _calls_allowed(request) else None
        taken = _Taken(state)
        yield chat_chunk(cid, self.model_name, created, {"role": "assistant", "content": ""})
        for piece in pieces:
            for delta in reader.feed(piece) if reader else [{"content": piece}]:
                yield chat_chunk(cid, self.model_name, created, delta, logprobs=chat_logprobs(taken.new()))
        for delta in reader.close() if reader else []:
            yield chat_chunk(cid, self.model_name, created, delta, logprobs=chat_logprobs(taken.new()))
        yield chat_chunk(cid, self.model_name, created, {}, _finish_reason(state.finish_reason, reader),
                         usage(state.prompt_tokens, state.completion_tokens), chat_logprobs(taken.new(last=True)))

    def _completion_chunks(self, pieces: Iterator[str], state: StreamState) -> Iterator[dict[str, Any]]:
        """A raw-prompt stream as ``text_completion`` chunks (legacy logprobs, offsets into the whole text)."""
        cid, created, taken, offset = completion_id().replace("chatcmpl-", "cmpl-"), int(time.time()), _Taken(state), 0
        for piece in pieces:
            yield text_completion(self.model_name, [(piece, None, legacy_logprobs(taken.new(), offset))], None, cid,
                                  created)
            offset += len(piece)
        yield text_completion(self.model_name, [("", state.finish_reason or "length",
                                                 legacy_logprobs(taken.new(last=True), offset))],
                              usage(state.prompt_tokens, state.completion_tokens), cid, created)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        """The request's prompt tokens; a prompt that leaves no room for a reply is refused naming its field."""
        if request.messages is not None:
            ids, field = self.engine.encode_chat(request.messages, request.reply_format), "messages"
        else:
            ids, field = self.engine.encode_text(request.prompt or ""), "prompt"
        try:
            self.engine.check_fits(ids)
        except ContextOverflow as exc:
            raise RequestError(field, f"{field}: {exc}; shorten the conversation") from None
        return ids

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

    def _answer(self, request: ChatRequest) -> Any:
        prompt_ids, options = self._prompt_ids(request), self._options(request)
        choices = [options.for_choice(i) for i in range(request.options.n)]
        results = self._constrained(request, partial(self.engine.complete_all, prompt_ids, choices))
        completion_tokens = sum(r.completion_tokens for r in results)
        if request.prompt is not None and request.text_completion:
            return text_completion(self.model_name, [(r.text, r.finish_reason, legacy_logprobs(r.logprobs))
                                                     for r in results], usage(len(prompt_ids), completion_tokens))
        if request.prompt is not None:
            return results[0].text if request.options.n == 1 else [r.text for r in results]
        choices: list[tuple[Any, str]] = [(r.text, r.finish_reason) for r in results]
        if _calls_allowed(request):
            choices = [_tool_reply(r.text, r.finish_reason) for r in results]
        return chat_completion(self.model_name, choices, prompt_tokens=len(prompt_ids),
                               completion_tokens=completion_tokens,
                               logprobs=[chat_logprobs(r.logprobs) for r in results])


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


def _tool_reply(text: str, reason: str) -> tuple[dict[str, Any], str]:
    """(message, finish_reason) of a whole reply that may be tool calls."""
    reader = ReplyReader()
    reader.feed(text)
    return reader.message(), _finish_reason(reason, reader) or reason


def _finish_reason(reason: str | None, reader: ReplyReader | None) -> str | None:
    """``tool_calls`` for a reply of complete calls that ended by itself; the decode step's reason otherwise."""
    return "tool_calls" if reader is not None and reader.complete_calls and reason == "stop" else reason
