"""Every chat request ``serve`` answers as an MLflow trace, linked to the served LoggedModel.

Traces go to the tracking store (``MLFLOW_TRACKING_URI``), experiment ``--experiment`` (default ``chatpack-serve``),
with the trace metadata ``mlflow.modelId`` set to the served model's id, so ``mlflow.search_traces(model_id=...)``
finds them. One trace per ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` or ``/v1/messages``
(also the refused
ones: 400, 429, 503; not a 401 for a missing or wrong API key, and never a request header):

- the root span ``chat.completions`` (``completions``, ``responses``, ``messages``; ``CHAT_MODEL``): inputs are the
  model input (messages and the options the caller set; the request body for a request refused before it), outputs
  the reply in the route's shape (OpenAI's; Anthropic's message for ``/v1/messages``), as MLflow's own chat
  integrations record them; attributes follow
  OpenTelemetry's GenAI names (``gen_ai.request.max_tokens``/``temperature``/``top_p``/``top_k``/``seed``/
  ``stop_sequences``, ``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.response.finish_reasons``) plus
  ``http.response.status_code``, ``chatpack.stream``, ``chatpack.flavour``, ``chatpack.time_to_first_token_s`` and
  MLflow's ``mlflow.chat.tokenUsage`` (the trace's token usage);
- children for the phases the server saw (:mod:`chatpack.serving.observability.request_context`): ``tokenise`` (chat
template and
  tokens), ``prefill`` (to the first token, including any wait for the model) and ``decode`` (the rest); a reply
  whose phases cannot be seen (a non-streamed ONNX reply, answered in a batch with others) gets one ``generate`` span.

``record_text=False`` leaves message contents and the reply text out (roles, options, counts stay). A finished request
becomes a :class:`TraceRecord` (plain values); :mod:`chatpack.serving.observability.trace_export` hands it to a separate
process that builds the spans with their recorded times (:func:`record_trace`) and lets MLflow export them
asynchronously: nothing on the request path waits for the store, or for the GIL the export would hold.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from chatpack.serving.observability.request_context import RequestContext

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "chatpack-serve"
ROOT_SPAN = "chat.completions"
# The root span of each traced route (what the request asked for); a route not listed gets ROOT_SPAN.
ROOT_SPANS = {"/v1/chat/completions": ROOT_SPAN, "/v1/completions": "completions", "/v1/responses": "responses",
              "/v1/messages": "messages"}
# MLflow's async export in the exporter process, unless set otherwise: 2 threads (MLflow's default is 10, each with
# its own store connection) and spans of several traces per store call (sqlite store: 21 ms CPU a trace, not 31).
EXPORT_DEFAULTS = {"MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS": "2",
                   "MLFLOW_ASYNC_TRACE_LOGGING_MAX_SPAN_BATCH_SIZE": "16",
                   "MLFLOW_ASYNC_TRACE_LOGGING_MAX_INTERVAL_MILLIS": "1000"}
_OPTION_ATTRIBUTES = {"max_tokens": "gen_ai.request.max_tokens", "temperature": "gen_ai.request.temperature",
                      "top_p": "gen_ai.request.top_p", "top_k": "gen_ai.request.top_k", "seed": "gen_ai.request.seed",
                      "stop": "gen_ai.request.stop_sequences", "n": "gen_ai.request.choice.count"}


@dataclass(frozen=True)
class TraceSettings:
    enabled: bool = True
    experiment: str = DEFAULT_EXPERIMENT
    record_text: bool = True


@dataclass(frozen=True)
class TraceRecord:
    """A finished request in plain values (it crosses to the exporter process): times in ns since the epoch."""

    start_ns: int
    end_ns: int
    route: str
    status: int
    marks: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    flavour: str | None = None
    payload: dict[str, Any] | None = None
    body: bytes = b""
    streamed: bool = False
    reply_text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    model_id: str | None = None
    model_uri: str | None = None

    @classmethod
    def of(cls, context: RequestContext, model_id: str | None, model_uri: str | None) -> TraceRecord:
        return cls(context.start_ns, context.end_ns or context.start_ns, context.route, context.status or 500,
                   {name: ns for name, (ns, _) in context.marks.items()}, context.error, context.flavour,
                   context.payload, context.body, context.streamed, context.reply_text, context.finish_reason,
                   context.prompt_tokens, context.completion_tokens, context.seconds_to("first_token"), model_id,
                   model_uri)


def experiment_id(name: str) -> str:
    """The id of experiment ``name`` in the tracking store, created if missing."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another server
        return client.get_experiment_by_name(name).experiment_id


def request_inputs(record: TraceRecord, record_text: bool) -> Any:
    """The request as the span's inputs: the model input, or the parsed body of a request refused before it."""
    data: Any = record.payload
    if data is None and record.body:
        try:
            data = json.loads(record.body)
        except ValueError:
            data = {"body": record.body.decode("utf-8", "replace")[:1000]}
    if record_text or not isinstance(data, dict):
        return data if record_text else None
    out = {k: v for k, v in data.items() if k != "messages"}
    if isinstance(data.get("messages"), list):
        out["messages"] = [{"role": m.get("role")} if isinstance(m, dict) else {} for m in data["messages"]]
    return out


def reply_outputs(record: TraceRecord, record_text: bool) -> dict[str, Any]:
    """The reply in the shape of the route's own reply (chat completion, text completion or Response), as far as the
    record holds it (the text, finish reason and usage)."""
    if record.error is not None and record.status != 200:
        return {"error": record.error}
    if record.route == "/v1/responses":
        status = "incomplete" if record.finish_reason == "length" else "completed"
        part = {"type": "output_text", "text": record.reply_text} if record_text else {"type": "output_text"}
        out = {"object": "response", "status": status, "output": [{"type": "message", "role": "assistant",
                                                                     "content": [part]}]}
        if record.prompt_tokens is not None:
            out["usage"] = token_usage(record)
        return out
    if record.route == "/v1/messages":  # Anthropic's message (finish_reason holds its stop_reason)
        block = {"type": "text", "text": record.reply_text} if record_text else {"type": "text"}
        out = {"type": "message", "role": "assistant", "content": [block], "stop_reason": record.finish_reason}
        if record.prompt_tokens is not None:
            out["usage"] = {"input_tokens": record.prompt_tokens, "output_tokens": record.completion_tokens or 0}
        return out
    if record.route == "/v1/completions":
        choice = {"index": 0, "finish_reason": record.finish_reason}
        if record_text:
            choice["text"] = record.reply_text
        out = {"object": "text_completion", "choices": [choice]}
        if record.prompt_tokens is not None:
            out["usage"] = token_usage(record, openai=True)
        return out
    message: dict[str, Any] = {"role": "assistant"}
    if record_text:
        message["content"] = record.reply_text
    out: dict[str, Any] = {"object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": record.finish_reason}]}
    if record.prompt_tokens is not None:
        out["usage"] = token_usage(record, openai=True)
    return out


def token_usage(record: TraceRecord, openai: bool = False) -> dict[str, int]:
    prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
    if openai:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


def root_attributes(record: TraceRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {"http.route": record.route, "http.response.status_code": record.status,
                                  "chatpack.stream": record.streamed, "chatpack.model_uri": record.model_uri}
    if record.flavour:
        attributes["chatpack.flavour"] = record.flavour
    for key, name in _OPTION_ATTRIBUTES.items():
        if isinstance(record.payload, dict) and record.payload.get(key) is not None:
            attributes[name] = record.payload[key]
    if record.prompt_tokens is not None:
        attributes |= {"gen_ai.usage.input_tokens": record.prompt_tokens,
                       "gen_ai.usage.output_tokens": record.completion_tokens or 0,
                       "mlflow.chat.tokenUsage": token_usage(record)}
    if record.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
    if record.ttft_s is not None:
        attributes["chatpack.time_to_first_token_s"] = round(record.ttft_s, 6)
    return attributes


def phases(record: TraceRecord) -> list[tuple[str, str, int, int]]:
    """(name, span type, start ns, end ns) of the phases seen between the model call and the response's end."""
    start, end = record.marks.get("model"), record.end_ns
    if start is None:
        return []  # refused before the model was called
    tokenised, first = record.marks.get("tokenised"), record.marks.get("first_token")
    if tokenised is None:
        return [("generate", "LLM", start, end)]
    spans = [("tokenise", "PARSER", start, tokenised)]
    if first is None:
        return spans + [("generate", "LLM", tokenised, end)]
    return spans + [("prefill", "LLM", tokenised, first), ("decode", "LLM", first, end)]


def record_trace(record: TraceRecord, settings: TraceSettings, experiment: str) -> None:
    """Log ``record`` as one trace (root span and phase spans, with their recorded times) to ``experiment``."""
    import mlflow

    text = settings.record_text
    metadata = {"mlflow.modelId": record.model_id} if record.model_id else None
    root_name = ROOT_SPANS.get(record.route, ROOT_SPAN)
    root = mlflow.start_span_no_context(root_name, span_type="CHAT_MODEL", inputs=request_inputs(record, text),
                                        metadata=metadata, experiment_id=experiment, start_time_ns=record.start_ns)
    for name, kind, start, end in phases(record):
        attributes = {"gen_ai.usage.output_tokens": record.completion_tokens or 0} if name == "decode" else None
        child = mlflow.start_span_no_context(name, span_type=kind, parent_span=root, start_time_ns=start,
                                             attributes=attributes)
        child.end(end_time_ns=end)
    status = "ERROR" if record.status >= 500 else "OK"
    root.end(outputs=reply_outputs(record, text), attributes=root_attributes(record), status=status,
             end_time_ns=record.end_ns)


def use_export_defaults() -> None:
    for key, value in EXPORT_DEFAULTS.items():
        os.environ.setdefault(key, value)
