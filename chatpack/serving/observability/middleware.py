"""The ASGI middleware that watches every request ``serve`` answers: Prometheus metrics and MLflow traces.

For each HTTP request it opens a :class:`~chatpack.serving.observability.request_context.RequestContext` (the current
one while
the request is answered, also in the threads that generate its reply), notes the response status and, for errors, the
message sent; once the last byte has gone out it counts the request in :class:`~chatpack.serving.observability.metrics.
ServerMetrics` and hands every request that runs the model (``POST`` to one of :data:`TRACED_ROUTES`:
chat
completions, text completions, responses, messages) to the
:class:`~chatpack.serving.observability.trace_export.TraceExporter`, except a 401
(a caller without a valid API key writes nothing to the tracking store; it is still counted in the metrics). Request
headers (``Authorization``, ``x-api-key``) are never recorded: only the body reaches a trace. Nothing here waits for
the tracking store: traces are built and exported by another process.
"""

from __future__ import annotations

import json
from typing import Any

from chatpack.serving.observability.metrics import ServerMetrics, route_label
from chatpack.serving.observability.request_context import RequestContext, begin, end
from chatpack.serving.observability.trace_export import TraceExporter

CHAT_ROUTE = "/v1/chat/completions"
TRACED_ROUTES = (CHAT_ROUTE, "/v1/completions", "/v1/responses", "/v1/messages")  # every route that runs the model
MAX_BODY = 1 << 20  # bytes of a request body kept for its trace (a larger body is recorded cut short)
UNTRACED_STATUSES = (401,)  # refused for want of a valid API key: counted, not traced


class RequestObserver:
    """Pure ASGI middleware (no extra task per request, so the request's context reaches the route)."""

    def __init__(self, app: Any, metrics: ServerMetrics, tracer: TraceExporter | None):
        self.app, self.metrics, self.tracer = app, metrics, tracer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(route=route_label(scope["path"]), method=scope["method"])
        traced = self.tracer is not None and context.route in TRACED_ROUTES and context.method == "POST"
        body, error = bytearray(), bytearray()

        async def receive_body() -> dict:
            message = await receive()
            if traced and message["type"] == "http.request" and len(body) < MAX_BODY:
                body.extend(message.get("body", b"")[: MAX_BODY - len(body)])
            return message

        async def send_noted(message: dict) -> None:
            if message["type"] == "http.response.start":
                context.status = message["status"]
            elif message["type"] == "http.response.body" and context.status != 200 and len(error) < MAX_BODY:
                error.extend(message.get("body", b""))
            await send(message)

        token = begin(context)
        busy = self.tracer is not None and context.method == "POST"  # the exporter waits while requests run
        if busy:
            self.tracer.activity.begin()
        try:
            await self.app(scope, receive_body, send_noted)
        finally:
            if busy:
                self.tracer.activity.end()
            end(token)
            context.finish(context.status or 500)
            context.body = bytes(body)
            context.error = _error_message(bytes(error)) if context.status != 200 else None
            self.metrics.observe(context)
            if traced and context.status not in UNTRACED_STATUSES and not self.tracer.submit(context):
                self.metrics.traces_dropped.inc()


def _error_message(body: bytes) -> str | None:
    """The ``message`` of an OpenAI (or Anthropic) error body, or the body itself (cut short)."""
    if not body:
        return None
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500]
