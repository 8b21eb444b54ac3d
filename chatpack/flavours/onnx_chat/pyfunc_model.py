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

from collections.abc import Iterator
from typing import Any

import mlflow

from chatpack.engine.chat_engine import OnnxChatEngine
from chatpack.flavours.onnx_chat.engine_client import EngineClient
from chatpack.protocol.chat_request import ChatRequest, parse_request
from chatpack.protocol.errors import RequestError
from chatpack.protocol.replies import chat_chunks, chat_reply, text_chunks, text_reply

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
        self.engine_client = EngineClient(self.engine)  # what ``serve`` calls (see engine_client)

    def predict(self, context, model_input, params=None) -> list[Any]:
        requests = [parse_request(row) for row in rows_of(model_input)]  # validate every row before generating
        completions = self.engine_client.complete_many(requests)
        return [self._reply(request, completion) for request, completion in zip(requests, completions)]

    def predict_stream(self, context, model_input, params=None) -> Iterator[Any]:
        rows = rows_of(model_input)
        if len(rows) != 1:
            raise RequestError(None, f"request: streaming takes one request, got {len(rows)}")
        request = parse_request(rows[0])
        events = self.engine_client.stream(request)
        if request.prompt is None:
            yield from chat_chunks(self.model_name, events)
        elif request.text_completion:
            yield from text_chunks(self.model_name, events)
        else:
            yield from (event.delta["content"] for event in events if hasattr(event, "delta"))

    def _reply(self, request: ChatRequest, completion: Any) -> Any:
        if request.prompt is None:
            return chat_reply(self.model_name, completion)
        if request.text_completion:
            return text_reply(self.model_name, completion)
        texts = [choice.text for choice in completion.choices]
        return texts[0] if request.options.n == 1 else texts
