"""Prometheus metrics of ``serve`` (``GET /metrics``, text exposition format), one registry per app.

| metric | type | what |
|---|---|---|
| ``chatpack_requests_total{route,status}`` | counter | HTTP requests answered, by route and status code |
| ``chatpack_request_duration_seconds{route}`` | histogram | arrival to the last byte sent (streams included) |
| ``chatpack_time_to_first_token_seconds`` | histogram | arrival to the first reply token (requests where it is seen) |
| ``chatpack_prompt_tokens_total`` / ``chatpack_completion_tokens_total`` | counter | tokens in answered requests |
| ``chatpack_requests_in_flight`` | gauge | admitted chat requests (generating plus waiting) |
| ``chatpack_queue_depth`` | gauge | admitted requests waiting for the model |
| ``chatpack_model_load_seconds`` | gauge | how long loading the model took (NaN while loading) |
| ``chatpack_model_loaded`` | gauge | 1 once the model answers, else 0 |
| ``chatpack_traces_dropped_total`` | counter | traces not recorded because the trace backlog was full |

"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chatpack.serving.observability.request_context import RequestContext

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
          "/tokenize", "/detokenize", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no ``*_created`` series next to every counter and histogram


def route_label(path: str) -> str:
    """The route a path belongs to; anything else is ``other`` (labels stay few whatever clients send)."""
    return path if path in ROUTES else "other"


class ServerMetrics:
    """The server's metrics; gauges read ``served`` (a ServedModel) when scraped."""

    def __init__(self, served: Any):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("chatpack_requests", "HTTP requests answered, by route and status code.",
                                ("route", "status"), registry=r)
        self.latency = Histogram("chatpack_request_duration_seconds", "Seconds from a request's arrival to the "
                                 "last byte of its response.", ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("chatpack_time_to_first_token_seconds", "Seconds from a chat request's arrival to its "
                              "first reply token.", buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("chatpack_prompt_tokens", "Prompt tokens of answered chat requests.", registry=r)
        self.completion_tokens = Counter("chatpack_completion_tokens", "Generated tokens of answered chat requests.",
                                         registry=r)
        Gauge("chatpack_requests_in_flight", "Admitted chat requests (generating plus waiting).",
              registry=r).set_function(lambda: served.in_flight)
        Gauge("chatpack_queue_depth", "Admitted chat requests waiting for the model.",
              registry=r).set_function(lambda: served.queue_depth() if served.model is not None else 0)
        Gauge("chatpack_model_load_seconds", "Seconds it took to load the model (NaN while loading).",
              registry=r).set_function(lambda: math.nan if served.load_seconds is None else served.load_seconds)
        Gauge("chatpack_model_loaded", "1 once the model is loaded and answering, else 0.",
              registry=r).set_function(lambda: float(served.model is not None))
        self.traces_dropped = Counter("chatpack_traces_dropped", "Traces not recorded because the trace backlog "
                                      "was full.", registry=r)

    def observe(self, context: RequestContext) -> None:
        """Count one finished request."""
        self.requests.labels(context.route, str(context.status)).inc()
        self.latency.labels(context.route).observe(context.seconds)
        if (ttft := context.seconds_to("first_token")) is not None:
            self.ttft.observe(ttft)
        if context.prompt_tokens:
            self.prompt_tokens.inc(context.prompt_tokens)
        if context.completion_tokens:
            self.completion_tokens.inc(context.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
