"""An OpenAI-compatible HTTP server over any MLflow chat model, with token streaming.

``POST /v1/chat/completions`` takes the OpenAI request body and answers a ``chat.completion`` object, or with
``"stream": true`` Server-Sent Events of ``chat.completion.chunk`` objects ending with ``data: [DONE]`` (driven by the
model's ``predict_stream``; a model without one sends its whole reply as one chunk). ``GET /v1/models`` lists the
served model, ``GET /health`` says whether it is loaded, ``GET /metrics`` gives Prometheus metrics
(:mod:`chatpack.serving.metrics`); every chat request becomes an MLflow trace (:mod:`chatpack.serving.tracing`).
Errors use OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}``: 400 for bad requests (naming the field), 401 for a missing or wrong API key, 404 unknown route,
429 when the bounded queue is full, 503 while the model loads.

API keys (:class:`ApiKeyGuard`): with at least one key configured, every route under ``/v1/`` (and ``/metrics`` with
``metrics_auth``) needs one of them; ``/health`` stays open for probes. Without a key the server is open, so
:func:`serve` warns when it listens beyond loopback unauthenticated.

One model copy serves all requests. Models that declare themselves safe for concurrent calls (the ONNX flavour,
metadata ``chatpack_concurrency: batched``) get every admitted request at once and batch the ones that meet; other
models run one request at a time, in arrival order. At most ``queue_size`` requests are admitted (running plus
waiting); more get 429 at once rather than piling up.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import threading
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError, error_body
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

API_KEY_ENV = "CHATPACK_API_KEY"  # the recommended way to give ``serve`` its key (a flag shows in the process list)
API_PREFIX = "/v1"  # every route under it needs a key once keys are configured
METRICS_PATH = "/metrics"


class ApiKeyGuard:
    """Pure ASGI middleware: once ``keys`` holds at least one key, every request under ``/v1`` (chat completions,
    completions, responses, models and any route added there later; ``/metrics`` too with ``metrics_auth``) must
    carry one of them, else it is answered HTTP 401 with OpenAI's error body (``code: invalid_api_key``) and
    ``WWW-Authenticate: Bearer``, before any route runs (an unknown ``/v1`` route without a key is 401, not 404).

    A key is accepted as ``Authorization: Bearer <key>`` (OpenAI's clients) or as ``x-api-key: <key>`` (Anthropic's
    header, for the Messages API route planned under ``/v1/messages``; for simplicity it is accepted on every ``/v1``
    route). The presented value is compared with every configured key in constant time (SHA-256 digests through
    :func:`hmac.compare_digest`, no early exit), and no key, presented or configured, is logged or echoed.

    It sits inside :class:`~chatpack.serving.observer.RequestObserver`, so a 401 is counted in the metrics by route
    and status like any other response (it is not traced: see the observer).
    """

    def __init__(self, app: Any, keys: Sequence[str], metrics_auth: bool = False):
        self.app, self.metrics_auth = app, metrics_auth
        self._digests = tuple(hashlib.sha256(key.encode("utf-8")).digest() for key in keys)

    def guarded(self, path: str) -> bool:
        if not self._digests:
            return False
        return path == API_PREFIX or path.startswith(API_PREFIX + "/") or (self.metrics_auth and path == METRICS_PATH)

    def accepted(self, presented: list[bytes]) -> bool:
        ok = False
        for value in presented:
            digest = hashlib.sha256(value).digest()
            for key in self._digests:
                ok |= hmac.compare_digest(digest, key)
        return ok

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not self.guarded(route_path(scope)):
            await self.app(scope, receive, send)
            return
        presented = presented_keys(scope["headers"])
        if self.accepted(presented):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # a later /v1 WebSocket route: refused before the handshake (policy violation)
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if presented:
            message = "invalid API key"
        elif any(name == b"authorization" for name, _ in scope["headers"]):
            message = "Authorization: only the Bearer scheme is accepted: send 'Authorization: Bearer <key>'"
        else:
            message = "missing API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')"
        await unauthorized(message)(scope, receive, send)


def route_path(scope: dict) -> str:
    """The path the router matches (``root_path`` taken off, as Starlette does), so a prefix cannot dodge the guard."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request presents: ``Authorization: Bearer <key>`` (scheme in any case) and ``x-api-key``."""
    found = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                found.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            found.append(value.strip())
    return found


def unauthorized(message: str) -> JSONResponse:
    """HTTP 401 in OpenAI's shape (:func:`~chatpack.protocol.errors.error_body`, as ``error_response`` builds it,
    with OpenAI's type and code for a bad key) and ``WWW-Authenticate: Bearer``."""
    body = error_body(401, message)
    body["error"] |= {"type": "invalid_request_error", "code": "invalid_api_key"}
    return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def log_auth(host: str, api_keys: Sequence[str], metrics_auth: bool = False) -> None:
    """Say how the endpoint is protected: INFO with the number of keys (never a key), or a WARNING when it listens
    beyond loopback with no key at all."""
    if api_keys:
        logger.info("API-key auth on: %d key%s accepted on %s/*%s ('Authorization: Bearer <key>' or 'x-api-key')",
                    len(api_keys), "" if len(api_keys) == 1 else "s", API_PREFIX,
                    f" and {METRICS_PATH}" if metrics_auth else f"; {METRICS_PATH} and /health open")
    elif not is_loopback(host):
        logger.warning("Listening on %s with NO authentication: anyone who can reach this port can use the model. "
                       "Set a key with the %s environment variable, or --api_key_file PATH (one key a line)",
                       host, API_KEY_ENV)


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
        return error_response(exc.status_code, f"{message}: {request.method} {request.url.path}")

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
