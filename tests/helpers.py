"""Helpers the test modules share (fixtures stay in conftest.py): asking the chat engine, logging a model and serving
it (``serve`` in a subprocess or a thread, ``mlflow models serve``), calling a server, and reading its traces.

Test modules import these from here, never from each other. The server's modules are imported where a helper uses
them, so that the engine's tests do not load the serving stack.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import mlflow
from mlflow.tracking import MlflowClient

from benchmarks.common import free_port, wait_for_http
from chatpack.engine.chat_engine import Completion, OnnxChatEngine, StreamState
from chatpack.protocol.chat_request import GenerationOptions

if TYPE_CHECKING:
    from openai import OpenAI

    from chatpack.serving.observability.tracing import TraceSettings
    from chatpack.serving.served_model import ServedModel

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]


# -- the chat engine ----------------------------------------------------------------------------------------------

def chat(engine: OnnxChatEngine, text: str) -> list[int]:
    return engine.encode_chat([{"role": "user", "content": text}])


def queued(engine: OnnxChatEngine, requests: list[tuple[list[int], GenerationOptions]]) -> list[Completion | Exception]:
    """``complete`` every request from its own thread while the model is busy, so that all of them queue first."""
    results: dict[int, Completion | Exception] = {}

    def call(i: int) -> None:
        try:
            results[i] = engine.complete(*requests[i])
        except Exception as exc:
            results[i] = exc

    with engine.model_lock:  # the model is busy: every request below has to wait for a row
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        deadline = time.time() + 60  # a guard against hanging, not a speed check
        while engine.batch.waiting < len(requests) and time.time() < deadline:
            time.sleep(0.01)
        assert engine.batch.waiting == len(requests)
    for t in threads:
        t.join(timeout=120)
    return [results[i] for i in range(len(requests))]


def streamed(engine: OnnxChatEngine, ids: list[int], options: GenerationOptions) -> tuple[list[str], StreamState]:
    state = StreamState(len(ids))
    return list(engine.stream(ids, options, state)), state


# -- logged models and servers ----------------------------------------------------------------------------------------

def logged(step, fetch_run_id: str, *extra: str) -> str:
    """Run a log step (``steps.log_onnx_pyfunc``, ``steps.log_transformers``) on a fetch run; the model's URI."""
    assert step.main(["--fetch_run_id", fetch_run_id, *extra]) == 0
    return MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]


@contextlib.contextmanager
def serve_cli(model_uri: str, *extra: str):
    """`python -m steps.serve` in a subprocess, as users start it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "steps.serve", "--model_uri", model_uri, "--port", str(port),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def serve_in_thread(served: ServedModel, load: bool = True):
    """The same app under uvicorn in this process, so a test can control loading."""
    import uvicorn

    from chatpack.serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served, load_in_background=load), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serving(uri: str, settings: TraceSettings) -> tuple[ServedModel, contextlib.AbstractContextManager]:
    """A ServedModel and the app over it with ``settings``, to run under uvicorn in this process."""
    from chatpack.serving.served_model import ServedModel

    served = ServedModel(uri)
    return served, app_in_thread(served, timeout=120, tracing=settings)


@contextlib.contextmanager
def app_in_thread(served: ServedModel, timeout: float = 180, **options):
    """``create_app(served, **options)`` under uvicorn in this process (tests can reach ``served``); yields its base
    URL once ``/health`` answers 200."""
    import uvicorn

    from chatpack.serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served, **options), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def mlflow_models_serve(model_uri: str):
    """The stock `mlflow models serve` in a subprocess: (the process, its /invocations URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=180, proc=proc)
    return proc, f"http://127.0.0.1:{port}/invocations"


def endpoint(step, fetch_run_id: str):
    """For a module fixture: the /invocations URL of `mlflow models serve` over a model the log step makes (8 new
    tokens by default), stopped when the fixture ends."""
    proc, url = mlflow_models_serve(logged(step, fetch_run_id, "--max_new_tokens", "8"))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


# -- calling a server ---------------------------------------------------------------------------------------------

def client(base: str) -> OpenAI:
    from openai import OpenAI

    return OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def raw(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, object, float]:
    """POST JSON to ``url``: (status, the parsed reply, seconds)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start_t = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), time.perf_counter() - start_t
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), time.perf_counter() - start_t


# -- traces -----------------------------------------------------------------------------------------------------------

def traces_of(experiment: str, model_id: str | None = None, expected: int = 0) -> list:
    """The experiment's traces, oldest first, once ``expected`` of them have been written (export is async)."""
    deadline, found = time.time() + 30, []
    while time.time() < deadline:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is not None:
            found = mlflow.search_traces(locations=[exp.experiment_id], model_id=model_id, return_type="list",
                                         order_by=["timestamp_ms ASC"], flush=True)
            if len(found) >= expected:
                return found
        time.sleep(0.3)
    return found


def spans_by_name(trace) -> dict:
    return {span.name: span for span in trace.data.spans}
