"""An OpenAI-compatible HTTP server over any MLflow chat model, with token streaming.

``POST /v1/chat/completions`` takes the OpenAI request body and answers a ``chat.completion`` object, or with
``"stream": true`` Server-Sent Events of ``chat.completion.chunk`` objects ending with ``data: [DONE]`` (driven by the
model's ``predict_stream``; a model without one sends its whole reply as one chunk). ``GET /v1/models`` lists the
served model, ``GET /health`` says whether it is loaded, ``GET /metrics`` gives Prometheus metrics
(:mod:`chatpack.serving.metrics`); every chat request becomes an MLflow trace (:mod:`chatpack.serving.tracing`).
Errors use OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}``: 400 for bad requests (naming the field), 404 unknown route, 429 when the bounded queue is full,
503 while the model loads.

One model copy serves all requests. Models that declare themselves safe for concurrent calls (the ONNX flavour,
metadata ``chatpack_concurrency: batched``) get every admitted request at once and batch the ones that meet; other
models run one request at a time, in arrival order. At most ``queue_size`` requests are admitted (running plus
waiting); more get 429 at once rather than piling up.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError
from chatpack.serving.chat_payload import check_structured, model_payload
from chatpack.serving.completions_route import register as register_completions
from chatpack.serving.generation import (
    as_error,
    data_events,
    error_response,
    read_body,
    refused_if_busy,
    stream_chunks,
    whole_reply,
)
from chatpack.serving.metrics import CONTENT_TYPE, ServerMetrics
from chatpack.serving.observer import RequestObserver
from chatpack.serving.responses_route import register as register_responses
from chatpack.serving.served_model import DEFAULT_QUEUE_SIZE, ServedModel, limit_malloc_arenas
from chatpack.serving.trace_export import TraceExporter
from chatpack.serving.tracing import TraceSettings

logger = logging.getLogger(__name__)


def create_app(served: ServedModel, load_in_background: bool = True, tracing: TraceSettings | None = None) -> FastAPI:
    """The app over ``served``; ``tracing`` says where chat requests are traced (default: on, see ``tracing``)."""
    tracing = tracing or TraceSettings()
    tracer = TraceExporter(tracing, served) if tracing.enabled else None
    metrics = ServerMetrics(served)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if tracer is not None:
            tracer.start()
        if load_in_background and served.model is None:
            threading.Thread(target=served.load, name="load-model", daemon=True).start()
        yield
        served.executor.shutdown(wait=False, cancel_futures=True)
        if tracer is not None:
            tracer.close()

    app = FastAPI(title="chatpack OpenAI-compatible server", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(RequestObserver, metrics=metrics, tracer=tracer)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "unknown route" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, f"{message}: {request.method} {request.url.path}")

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "ok" if served.model is not None else ("error" if served.load_error else "loading")
        body = {"status": status, "model": served.name, "in_flight": served.in_flight, "error": served.load_error,
                "compute": served.describe() if served.model is not None else None}
        return JSONResponse(body, 200 if status == "ok" else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "mlflow", "root": served.model_uri}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body, refused = await read_body(request, served)
        if refused is not None:
            return refused
        try:
            chat = parse_request(body)
            if chat.prompt is not None:
                raise RequestError("prompt", "prompt: not a chat-completions field; send 'messages'")
            check_structured(chat, served)
        except RequestError as exc:
            return as_error(exc)
        if (busy := refused_if_busy(served)) is not None:
            return busy
        payload = model_payload(chat)
        if chat.stream:
            items = await stream_chunks(served, payload)
            return items if isinstance(items, JSONResponse) else data_events(items)
        reply = await whole_reply(served, payload, request)
        return reply if isinstance(reply, JSONResponse) else JSONResponse(reply)

    register_responses(app, served)
    register_completions(app, served)
    return app


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8080, queue_size: int = DEFAULT_QUEUE_SIZE,
          threads: int | None = None, tracing: TraceSettings | None = None, engine: dict[str, int] | None = None
          ) -> None:
    """Run the server until interrupted (``engine``: overrides of the ONNX model's batch settings)."""
    import uvicorn

    limit_malloc_arenas()
    app = create_app(ServedModel(model_uri, queue_size, threads, engine), tracing=tracing)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=30)
