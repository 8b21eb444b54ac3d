"""The HTTP server over any MLflow chat model: the app, its middleware and the routes of every API surface.

One package per API surface, each with its protocol types, its logic and its router: ``/v1/chat/completions``
(:mod:`chatpack.serving.chat`), ``/v1/completions`` (:mod:`chatpack.serving.completions`), ``/v1/responses``
(:mod:`chatpack.serving.responses`), Anthropic's ``/v1/messages`` and ``/v1/messages/count_tokens``
(:mod:`chatpack.serving.messages`), ``/tokenize`` and ``/detokenize`` (:mod:`chatpack.serving.tokens`). Beside
them: ``GET /v1/models`` lists the served model, ``GET /health`` says whether it is loaded (and the ONNX engine's
batch counters), ``GET /metrics`` gives Prometheus metrics; every request is observed
(:mod:`chatpack.serving.observability`: traces in MLflow, metrics). Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: 400 for bad requests (naming the field), 401 for a missing or
wrong API key (:mod:`chatpack.serving.auth`), 404 unknown route, 429 when the bounded queue is full, 503 while the
model loads (under ``/v1/messages`` in Anthropic's shape instead: :mod:`chatpack.serving.messages.errors`).

One model copy serves all requests. Models that declare themselves safe for concurrent calls (the ONNX flavour,
metadata ``chatpack_concurrency: batched``) get every admitted request at once and batch the ones that meet; other
models run one request at a time, in arrival order. At most ``queue_size`` requests are admitted (running plus
waiting); more get 429 at once rather than piling up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatpack.serving.auth import API_KEY_ENV, ApiKeyGuard, log_auth
from chatpack.serving.chat.router import register as register_chat
from chatpack.serving.completions.router import register as register_completions
from chatpack.serving.http import error_response
from chatpack.serving.messages.errors import anthropic_error_body, is_messages_path
from chatpack.serving.messages.router import register as register_messages
from chatpack.serving.observability.metrics import CONTENT_TYPE, ServerMetrics
from chatpack.serving.observability.middleware import RequestObserver
from chatpack.serving.observability.trace_export import TraceExporter
from chatpack.serving.observability.tracing import TraceSettings
from chatpack.serving.responses.router import register as register_responses
from chatpack.serving.served_model import DEFAULT_QUEUE_SIZE, ServedModel, limit_malloc_arenas
from chatpack.serving.tokens.router import register as register_tokens

__all__ = ["API_KEY_ENV", "create_app", "serve"]

logger = logging.getLogger(__name__)

def create_app(served: ServedModel, load_in_background: bool = True, tracing: TraceSettings | None = None,
               api_keys: Sequence[str] = (), metrics_auth: bool = False) -> FastAPI:
    """The app over ``served``; ``tracing`` says where chat requests are traced (default: on, see ``tracing``);
    ``api_keys`` (none: open) are required on ``/v1/*``, and on ``/metrics`` too with ``metrics_auth``."""
    if metrics_auth and not api_keys:
        raise ValueError(f"metrics_auth: needs an API key ({API_KEY_ENV}, --api_key or --api_key_file)")
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
    # Added first, so it runs inside the observer: a 401 is counted in the metrics like any other response.
    app.add_middleware(ApiKeyGuard, keys=tuple(api_keys), metrics_auth=metrics_auth)
    app.add_middleware(RequestObserver, metrics=metrics, tracer=tracer)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "unknown route" if exc.status_code == 404 else str(exc.detail)
        message = f"{message}: {request.method} {request.url.path}"
        if is_messages_path(request.url.path):
            return JSONResponse(anthropic_error_body(exc.status_code, message), exc.status_code)
        return error_response(exc.status_code, message)

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "ok" if served.model is not None else ("error" if served.load_error else "loading")
        body = {"status": status, "model": served.name, "in_flight": served.in_flight, "error": served.load_error,
                "compute": served.describe() if served.model is not None else None,
                "auth": "api_key" if api_keys else "none"}
        return JSONResponse(body, 200 if status == "ok" else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        # OpenAI's list, with the fields Anthropic's model list adds (type, display_name, created_at, has_more, ...)
        return JSONResponse({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "mlflow", "root": served.model_uri,
             "type": "model", "display_name": served.name, "created_at": "1970-01-01T00:00:00Z"}],
            "has_more": False, "first_id": served.name, "last_id": served.name})

    register_chat(app, served)
    register_responses(app, served)
    register_completions(app, served)
    register_messages(app, served)
    register_tokens(app, served)
    return app


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8080, queue_size: int = DEFAULT_QUEUE_SIZE,
          threads: int | None = None, tracing: TraceSettings | None = None, engine: dict[str, int] | None = None,
          api_keys: Sequence[str] = (), metrics_auth: bool = False, exit_on_load_error: bool = False) -> None:
    """Run the server until interrupted (``engine``: overrides of the ONNX model's batch settings; ``api_keys``,
    ``metrics_auth``: see :class:`ApiKeyGuard`). With ``exit_on_load_error`` a model that fails to load stops the
    server, and this raises ``SystemExit`` (status 1) naming the error; otherwise the server stays up and ``/health``
    reports it."""
    import uvicorn

    limit_malloc_arenas()
    served = ServedModel(model_uri, queue_size, threads, engine)
    app = create_app(served, tracing=tracing, api_keys=api_keys, metrics_auth=metrics_auth)
    log_auth(host, api_keys, metrics_auth)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_keep_alive=30))
    if exit_on_load_error:
        def stop() -> None:
            logger.error("Stopping the server: the model did not load and --exit_on_load_error is set")
            server.should_exit = True

        served.on_load_error = stop
    server.run()
    if exit_on_load_error and served.load_error:
        raise SystemExit(f"error: {served.model_uri} did not load: {served.load_error}")
