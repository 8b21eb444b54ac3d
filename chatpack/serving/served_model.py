"""The model ``serve`` answers with: loading it (with its own code), admission counting, and its worker threads.

A logged ONNX model carries its runtime code as a ``chatpack`` package in its ``code/`` folder. The server process has
its own ``chatpack`` imported already, and Python would resolve the model's ``from chatpack... import ...`` to the
server's copy: a model logged at another commit would then run (or fail to import) code it was not logged with. So the
model is loaded with the server's copies of its code's top-level packages taken out of ``sys.modules``; they are put
back afterwards, while the model keeps the modules it imported from its own folder.

A transformers ``llm/v1/chat`` model is not served through its pyfunc but through the logged pipeline and
:class:`~chatpack.serving.transformers_adapter.TransformersChat` (``stop``, context check, token streaming). Either way
the model is wrapped in :class:`~chatpack.serving.observability.observed_model.ObservedModel`, which notes each call on
the current request for traces and metrics.

An ONNX model logged by this version exposes its engine through a typed client (:mod:`chatpack.flavours.onnx_chat.
engine_client`, reached with MLflow's public ``unwrap_python_model()``): :meth:`ServedModel.reply` and
:meth:`ServedModel.stream` hand it the request the route parsed, and build the reply objects from its typed results
(:mod:`chatpack.protocol.replies`). Every other model (the transformers flavour, ONNX models of another client version)
gets the same request as pyfunc input (:func:`~chatpack.protocol.chat_request.model_payload`); both give the same
replies.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chatpack.flavours.onnx_chat.engine_client import ENGINE_CLIENT_VERSION, EngineClient
from chatpack.flavours.onnx_chat.pyfunc_model import CONCURRENCY_KEY, ENGINE_CONFIG, THREADS_CONFIG_KEY
from chatpack.protocol.chat_request import ChatRequest, model_payload
from chatpack.protocol.replies import chat_chunks, chat_reply, reply_chunks, text_chunks, text_reply
from chatpack.serving.observability.observed_model import ObservedModel, observed_chunks, observed_replies
from chatpack.serving.observability.request_context import ContextExecutor
from chatpack.serving.transformers_adapter import FLAVOUR as TRANSFORMERS
from chatpack.serving.transformers_adapter import TransformersChat

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 16
CHAT_TASK = "llm/v1/chat"
MALLOC_ARENAS = 2  # glibc's default is 8 per core; with a thread pool that fragments (measured: RSS +17% in a soak)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (``mallopt(M_ARENA_MAX)``), unless ``MALLOC_ARENA_MAX`` is set.

    Every thread that allocates gets an arena of its own, up to 8 per core, and memory freed in one is not reused by
    the others: with a pool of request threads RSS kept growing in the soak (bundled ONNX model: +17.7% over 1,000
    requests; capped at 2 it levelled off ~200 MB lower). Call before the threads start; False where it does not apply.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, arenas) == 1  # M_ARENA_MAX
    except OSError:  # not glibc
        return False


def without_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it masked (load errors are shown by the open ``/health``;
    a tracking URI may carry credentials)."""
    return re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


def served_name(model_uri: str) -> str:
    """``models:/name@alias`` and ``models:/name/3`` serve as ``name``; other URIs by their last path part."""
    if model_uri.startswith("models:/"):
        rest = model_uri.removeprefix("models:/")
        return rest.split("@")[0].split("/")[0]
    return model_uri.rstrip("/").rsplit("/", 1)[-1]


def code_packages(model_dir: Path, code_folder: str | None) -> set[str]:
    """Top-level module and package names in a model's code folder (what its code imports itself as)."""
    if not code_folder or not (model_dir / code_folder).is_dir():
        return set()
    return {p.stem if p.suffix == ".py" else p.name for p in (model_dir / code_folder).iterdir()
            if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}


@contextlib.contextmanager
def own_imports(names: set[str]) -> Iterator[None]:
    """While the block runs, modules under ``names`` import afresh (from the model's code folder, first on
    ``sys.path`` once MLflow adds it); afterwards the server's own modules are back in ``sys.modules``."""
    def ours(module: str) -> bool:
        return module.split(".")[0] in names

    saved = {name: sys.modules.pop(name) for name in [m for m in sys.modules if ours(m)]}
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for name in [m for m in sys.modules if ours(m)]:
            del sys.modules[name]  # the model keeps references to its own modules
        sys.modules.update(saved)


def load_model(model_uri: str, threads: int | None = None, engine: dict[str, int] | None = None
               ) -> tuple[Any, str, Any]:
    """(model, flavour, MLmodel) for ``model_uri``, with ``threads`` applied: the ONNX pyfunc's ``threads``
    model_config, or torch's thread count for other flavours; ``engine`` overrides the ONNX model's logged batch
    settings (:data:`ENGINE_CONFIG` keys). A transformers chat model comes back as the :class:`TransformersChat`
    adapter, anything else as its pyfunc loaded with its own code (see the module docstring).
    """
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    meta = Model.load(str(local / "MLmodel"))
    pyfunc_conf = meta.flavors.get("python_function", {})
    batched = bool((meta.metadata or {}).get(CONCURRENCY_KEY))
    if threads and not batched:
        import torch

        torch.set_num_threads(threads)
    if meta.flavors.get(TRANSFORMERS, {}).get("inference_task") == CHAT_TASK:
        return TransformersChat(local, meta), TRANSFORMERS, meta
    config = {THREADS_CONFIG_KEY: threads} if threads and batched else {}
    if batched:
        config |= {key: value for key, value in (engine or {}).items() if key in ENGINE_CONFIG and value is not None}
    with own_imports(code_packages(local, pyfunc_conf.get("code"))):
        model = mlflow.pyfunc.load_model(str(local), model_config=config or None)
    return model, "onnx" if batched else next(iter(set(meta.flavors) - {"python_function"}), "pyfunc"), meta


def engine_client(model: Any) -> tuple[Any, Any]:
    """(the typed engine client, the engine's state view) of a loaded model, through MLflow's public
    ``unwrap_python_model()``: the client when the model's :data:`ENGINE_CLIENT_VERSION` is the server's (else None:
    the model is called through its pyfunc); the view also for an ONNX model logged before the client existed (the
    server's :class:`EngineClient` over its engine, read for ``/health``, cancelling and queue depth only)."""
    unwrap = getattr(model, "unwrap_python_model", None)
    python_model = unwrap() if unwrap is not None else None
    client = getattr(python_model, "engine_client", None)
    if client is not None and getattr(client, "version", None) == ENGINE_CLIENT_VERSION:
        return client, client
    engine = getattr(python_model, "engine", None)
    return None, (EngineClient(engine) if engine is not None and hasattr(engine, "kv") else None)


class CountingLock:
    """A lock that knows how many threads wait for it (the queue of a model that answers one request at a time)."""

    def __init__(self) -> None:
        self._lock, self._count_lock, self.waiting = threading.Lock(), threading.Lock(), 0

    def __enter__(self) -> None:
        with self._count_lock:
            self.waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count_lock:
                self.waiting -= 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class ServedModel:
    """The loaded pyfunc model, its admission counter and the threads that call it. ``on_load_error``: called (no
    arguments) after a load fails, e.g. to stop the server instead of leaving it up to report the error."""

    def __init__(self, model_uri: str, queue_size: int = DEFAULT_QUEUE_SIZE, threads: int | None = None,
                 engine: dict[str, int] | None = None, on_load_error: Callable[[], None] | None = None):
        if queue_size < 1:
            raise ValueError(f"queue_size: must be >= 1, got {queue_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        self.model_uri, self.name, self.queue_size = model_uri, served_name(model_uri), queue_size
        self.threads, self.engine_settings = threads, dict(engine or {})
        self.on_load_error = on_load_error
        self.model: Any = None
        self.client: Any = None  # the ONNX model's typed engine client, when its version is the server's
        self.engine_view: Any = None  # the ONNX engine's state (/health, cancelling, queue depth), any version
        self.flavour: str | None = None
        self.model_id: str | None = None  # the LoggedModel (traces link to it)
        self.streamable = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.in_flight = 0
        self._count_lock = threading.Lock()
        self.serial: contextlib.AbstractContextManager = CountingLock()  # around each call, unless batched
        self.executor = ContextExecutor(max_workers=queue_size, thread_name_prefix="generate")

    def load(self) -> None:
        try:
            start = time.perf_counter()
            model, self.flavour, meta = load_model(self.model_uri, self.threads, self.engine_settings)
            self.model_id = meta.model_id
            self.streamable = self.flavour == TRANSFORMERS or bool(
                meta.flavors.get("python_function", {}).get("streamable"))
            if (meta.metadata or {}).get(CONCURRENCY_KEY) == "batched":
                self.serial = contextlib.nullcontext()
            self.client, self.engine_view = engine_client(model)
            self.load_seconds = time.perf_counter() - start
            self.model = ObservedModel(model, self.flavour)  # last: requests are admitted from here on
            logger.info("Loaded %s (%s) in %.1f s (streaming: %s, concurrent: %s); compute: %s", self.model_uri,
                        self.flavour, self.load_seconds, self.streamable,
                        isinstance(self.serial, contextlib.nullcontext), self.describe())
        except Exception as exc:  # reported by /health and 503s, not a crash
            self.load_error = without_credentials(f"{type(exc).__name__}: {exc}")[:500]
            logger.exception("Loading %s failed", self.model_uri)
            if self.on_load_error is not None:
                self.on_load_error()

    # -- answering a parsed request (what the routes call, on the executor) ----------------------------------------
    def reply(self, request: ChatRequest) -> dict[str, Any]:
        """The model's whole reply to ``request``: a ``chat.completion`` (raw-prompt form with ``text_completion``:
        a ``text_completion``) with ``model`` set to the served name."""
        return self.replies([request])[0]

    def replies(self, requests: list[ChatRequest]) -> list[dict[str, Any]]:
        """The replies to several requests sent together (they decode together on the ONNX engine). With the typed
        engine client the parsed requests go to it as they are; any other model gets them as pyfunc input."""
        payloads = [model_payload(r) for r in requests]
        payload = payloads[0] if len(payloads) == 1 else payloads
        if self.client is not None:
            def typed() -> list[dict[str, Any]]:
                completions = self.client.complete_many(requests)
                return [(text_reply if r.prompt is not None else chat_reply)(self.name, c)
                        for r, c in zip(requests, completions)]

            return observed_replies(self.flavour, payload, typed)
        with self.serial:
            replies = self.model.predict(payload)
        return [{**reply, "model": self.name} if isinstance(reply, dict) else reply for reply in replies]

    def stream(self, request: ChatRequest) -> Iterator[dict[str, Any]]:
        """The model's reply to ``request`` as ``chat.completion.chunk`` dicts (``text_completion`` chunks for the
        raw-prompt form): from the typed engine client, or the model's ``predict_stream``; a model without one: its
        whole reply as three chunks. The caller holds :attr:`serial`."""
        payload = model_payload(request)
        if self.client is not None:
            chunks = text_chunks if request.prompt is not None else chat_chunks
            return observed_chunks(self.flavour, payload, chunks(self.name, self.client.stream(request)))
        if self.streamable:
            return self.model.predict_stream(payload)
        return iter(reply_chunks(self.model.predict(payload)[0], self.name))

    @property
    def engine(self) -> Any:
        """The ONNX pyfunc's chat engine (None for other models)."""
        return getattr(self.engine_view, "engine", None)

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports of the model's compute: threads, and for the ONNX engine its KV rows and batch."""
        return self.engine_view.stats() if self.engine_view is not None else {"threads": self.threads}

    def cancel(self, thread: int | None) -> None:
        """Cancel what the model is doing for the executor thread ``thread`` (the ONNX engine's batch rows of the
        requests that thread submitted; nothing for other models)."""
        if thread is not None and self.engine_view is not None:
            self.engine_view.cancel(thread)

    def queue_depth(self) -> int:
        """Admitted requests waiting for the model: for one-at-a-time models those waiting for it, for the ONNX
        engine those waiting for a row of its batch."""
        if isinstance(self.serial, CountingLock):
            return self.serial.waiting
        return self.engine_view.queue_depth() if self.engine_view is not None else 0

    def admit(self) -> bool:
        with self._count_lock:
            if self.in_flight >= self.queue_size:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._count_lock:
            self.in_flight -= 1
