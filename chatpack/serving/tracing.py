"""Every chat request ``serve`` answers as an MLflow trace, linked to the served LoggedModel.

Traces go to the tracking store (``MLFLOW_TRACKING_URI``), experiment ``--experiment`` (default ``chatpack-serve``),
with the trace metadata ``mlflow.modelId`` set to the served model's id, so ``mlflow.search_traces(model_id=...)``
finds them. One trace per ``POST /v1/chat/completions`` (also the refused ones: 400, 429, 503):

- the root span ``chat.completions`` (``CHAT_MODEL``): inputs are the request (messages and the options the caller
  set), outputs the reply in OpenAI's shape, as MLflow's own chat integrations record them; attributes follow
  OpenTelemetry's GenAI names (``gen_ai.request.max_tokens``/``temperature``/``top_p``/``top_k``/``seed``/
  ``stop_sequences``, ``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.response.finish_reasons``) plus
  ``http.response.status_code``, ``chatpack.stream``, ``chatpack.flavour``, ``chatpack.time_to_first_token_s`` and
  MLflow's ``mlflow.chat.tokenUsage`` (the trace's token usage);
- children for the phases the server saw (:mod:`chatpack.serving.request_context`): ``tokenise`` (chat template and
  tokens), ``prefill`` (to the first token, including any wait for the model) and ``decode`` (the rest); a reply
  whose phases cannot be seen (a non-streamed ONNX reply, answered in a batch with others) gets one ``generate`` span.

``record_text=False`` leaves message contents and the reply text out (roles, options, counts stay). Spans are built
after the response has been sent, from the recorded times, on one background thread; MLflow then exports them
asynchronously (``MLFLOW_ENABLE_ASYNC_TRACE_LOGGING``, on by default), so the request path never waits for the store;
unless set, its export uses 2 threads and batches spans (:data:`EXPORT_DEFAULTS`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from chatpack.serving.request_context import RequestContext

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "chatpack-serve"
ROOT_SPAN = "chat.completions"
# MLflow's async export, unless set otherwise: 2 threads (MLflow's default is 10, each with its own store connection)
# and spans of several traces per store call (measured on a sqlite store: 21 ms CPU per trace instead of 31).
EXPORT_DEFAULTS = {"MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS": "2",
                   "MLFLOW_ASYNC_TRACE_LOGGING_MAX_SPAN_BATCH_SIZE": "16",
                   "MLFLOW_ASYNC_TRACE_LOGGING_MAX_INTERVAL_MILLIS": "1000"}
MAX_PENDING = 1000  # traces waiting to be built; more are dropped (and counted) rather than piling up in memory
_OPTION_ATTRIBUTES = {"max_tokens": "gen_ai.request.max_tokens", "temperature": "gen_ai.request.temperature",
                      "top_p": "gen_ai.request.top_p", "top_k": "gen_ai.request.top_k", "seed": "gen_ai.request.seed",
                      "stop": "gen_ai.request.stop_sequences", "n": "gen_ai.request.choice.count"}


@dataclass(frozen=True)
class TraceSettings:
    enabled: bool = True
    experiment: str = DEFAULT_EXPERIMENT
    record_text: bool = True


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


def request_inputs(context: RequestContext, record_text: bool) -> Any:
    """The request as the span's inputs: the model input, or the parsed body of a request refused before it."""
    data = context.payload
    if data is None and context.body:
        try:
            data = json.loads(context.body)
        except ValueError:
            data = {"body": context.body.decode("utf-8", "replace")[:1000]}
    if record_text or not isinstance(data, dict):
        return data if record_text else None
    out = {k: v for k, v in data.items() if k != "messages"}
    if isinstance(data.get("messages"), list):
        out["messages"] = [{"role": m.get("role")} if isinstance(m, dict) else {} for m in data["messages"]]
    return out


def reply_outputs(context: RequestContext, record_text: bool) -> dict[str, Any]:
    if context.error is not None and context.status != 200:
        return {"error": context.error}
    message: dict[str, Any] = {"role": "assistant"}
    if record_text:
        message["content"] = context.reply_text
    out: dict[str, Any] = {"object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": context.finish_reason}]}
    if context.prompt_tokens is not None:
        out["usage"] = token_usage(context, openai=True)
    return out


def token_usage(context: RequestContext, openai: bool = False) -> dict[str, int]:
    prompt, completion = context.prompt_tokens or 0, context.completion_tokens or 0
    if openai:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


def root_attributes(context: RequestContext, model_uri: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"http.route": context.route, "http.response.status_code": context.status,
                                  "chatpack.stream": context.streamed, "chatpack.model_uri": model_uri}
    if context.flavour:
        attributes["chatpack.flavour"] = context.flavour
    for key, name in _OPTION_ATTRIBUTES.items():
        if isinstance(context.payload, dict) and context.payload.get(key) is not None:
            attributes[name] = context.payload[key]
    if context.prompt_tokens is not None:
        attributes |= {"gen_ai.usage.input_tokens": context.prompt_tokens,
                       "gen_ai.usage.output_tokens": context.completion_tokens or 0,
                       "mlflow.chat.tokenUsage": token_usage(context)}
    if context.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [context.finish_reason]
    if (ttft := context.seconds_to("first_token")) is not None:
        attributes["chatpack.time_to_first_token_s"] = round(ttft, 6)
    return attributes


def phases(context: RequestContext) -> list[tuple[str, str, int, int]]:
    """(name, span type, start ns, end ns) of the phases seen between the model call and the response's end."""
    marks = {name: ns for name, (ns, _) in context.marks.items()}
    start, end = marks.get("model"), context.end_ns
    if start is None or end is None:
        return []  # refused before the model was called
    tokenised, first = marks.get("tokenised"), marks.get("first_token")
    if tokenised is None:
        return [("generate", "LLM", start, end)]
    spans = [("tokenise", "PARSER", start, tokenised)]
    if first is None:
        return spans + [("generate", "LLM", tokenised, end)]
    return spans + [("prefill", "LLM", tokenised, first), ("decode", "LLM", first, end)]


class RequestTracer:
    """Turns finished :class:`RequestContext` objects into traces on a background thread (see the module docs)."""

    def __init__(self, settings: TraceSettings, served: Any):
        self.settings, self.served = settings, served  # served: the ServedModel (its model_id once loaded)
        self.experiment_id: str | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace")

    def start(self) -> None:
        """Resolve the experiment (created if missing); tracing stays off if the tracking store is unreachable."""
        for key, value in EXPORT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        try:
            self.experiment_id = experiment_id(self.settings.experiment)
            logger.info("Tracing chat requests to experiment %r (id %s)", self.settings.experiment,
                        self.experiment_id)
        except Exception:
            logger.exception("Tracing off: experiment %r not reachable in the tracking store",
                             self.settings.experiment)

    def submit(self, context: RequestContext) -> bool:
        """Queue ``context`` to become a trace; False if it was dropped (backlog full)."""
        if self.experiment_id is None:
            return True  # tracing is off (the store was not reachable at start)
        with self._lock:
            if self._pending >= MAX_PENDING:
                return False
            self._pending += 1
        self._worker.submit(self._record_and_count, context)
        return True

    def _record_and_count(self, context: RequestContext) -> None:
        try:
            self.record(context)
        except Exception:
            logger.warning("Could not record a trace", exc_info=True)
        finally:
            with self._lock:
                self._pending -= 1

    def record(self, context: RequestContext) -> None:
        import mlflow

        text = self.settings.record_text
        model_id = self.served.model_id
        metadata = {"mlflow.modelId": model_id} if model_id else None
        root = mlflow.start_span_no_context(ROOT_SPAN, span_type="CHAT_MODEL", inputs=request_inputs(context, text),
                                            metadata=metadata, experiment_id=self.experiment_id,
                                            start_time_ns=context.start_ns)
        for name, kind, start, end in phases(context):
            attributes = {"gen_ai.usage.output_tokens": context.completion_tokens or 0} if name == "decode" else None
            child = mlflow.start_span_no_context(name, span_type=kind, parent_span=root, start_time_ns=start,
                                                 attributes=attributes)
            child.end(end_time_ns=end)
        status = "ERROR" if (context.status or 500) >= 500 else "OK"
        root.end(outputs=reply_outputs(context, text), attributes=root_attributes(context, self.served.model_uri),
                 status=status, end_time_ns=context.end_ns)

    def close(self) -> None:
        """Build what is pending and flush MLflow's export queue (at server shutdown)."""
        self._worker.shutdown(wait=True)
        try:
            import mlflow

            mlflow.flush_trace_async_logging()
        except Exception:
            logger.debug("flushing traces failed", exc_info=True)
