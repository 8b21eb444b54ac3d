"""API keys on `serve`: `/v1/*` needs `Authorization: Bearer <key>` (or `x-api-key`) once a key is configured, driven
with the official openai client (and httpx for raw headers) against one real server over the tiny fixture model."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid

import httpx
import mlflow
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient
from openai import OpenAI

from chatpack.serving.app import API_KEY_ENV, create_app
from chatpack.serving.auth import log_auth
from chatpack.serving.observability.tracing import TraceSettings
from chatpack.serving.served_model import ServedModel
from steps import log_onnx_pyfunc
from steps import serve as serve_step
from tests.conftest import free_port, wait_for_http
from tests.helpers import MESSAGES, logged

ENV_KEY = f"sk-env-{uuid.uuid4().hex}"  # given as CHATPACK_API_KEY
FILE_KEY = f"sk-file-{uuid.uuid4().hex}"  # the second key of the key file
WRONG_KEY = f"sk-wrong-{uuid.uuid4().hex}"
EXPERIMENT = f"keys-{uuid.uuid4().hex[:8]}"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# serving keys\n\n{ENV_KEY}\n   {FILE_KEY}  \n# {WRONG_KEY} (commented out)\n")
    return path


@pytest.fixture(scope="module")
def onnx_uri(fixture_fetch_run) -> str:
    return logged(log_onnx_pyfunc, fixture_fetch_run, "--max_new_tokens", "16")


@pytest.fixture(scope="module")
def server(onnx_uri, key_file):
    """One traced server for the module, its keys read as `serve` reads them (environment variable + key file)."""
    args = serve_step.parse_args(["--model_uri", onnx_uri, "--api_key_file", str(key_file)])
    keys = serve_step.api_keys(args, environ={API_KEY_ENV: ENV_KEY})
    assert keys == [ENV_KEY, FILE_KEY]
    app = create_app(ServedModel(onnx_uri), tracing=TraceSettings(experiment=EXPERIMENT), api_keys=keys)
    port = free_port()
    # log_config=None and debug: uvicorn's own records (access lines included) reach the loggers the tests watch.
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="debug"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/health", timeout=120)
        yield base
    finally:
        uv.should_exit = True
        thread.join(timeout=60)


def api(base: str, key: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def assert_invalid_key(err: pytest.ExceptionInfo, says: str) -> None:
    assert err.value.status_code == 401
    assert err.value.body == {"message": err.value.body["message"], "type": "invalid_request_error", "param": None,
                              "code": "invalid_api_key"}
    assert says in err.value.body["message"]
    assert err.value.response.headers["www-authenticate"] == "Bearer"


def traces_until(marker: str, timeout: float = 60) -> list:
    """Every trace of the module's experiment once one holding ``marker`` is written (they are written in order)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            found = mlflow.search_traces(locations=[exp.experiment_id], return_type="list", flush=True)
            if any(marker in trace.to_json() for trace in found):
                return found
        time.sleep(0.3)
    raise AssertionError(f"no trace holding {marker} within {timeout} s")


def test_traces_hold_no_key_and_refused_requests_leave_none(server):  # first: the exporter has little to write
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    refused = httpx.post(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {WRONG_KEY}"},
                         json={"messages": [{"role": "user", "content": f"refused {marker}"}]})
    assert refused.status_code == 401
    api(server, ENV_KEY).chat.completions.create(model="m", messages=[{"role": "user", "content": marker}],
                                                 max_tokens=2)
    traces = traces_until(marker)
    roots = [next(span for span in trace.data.spans if span.parent_id is None) for trace in traces]
    statuses = [root.attributes.get("http.response.status_code") for root in roots]
    assert 200 in statuses and 401 not in statuses
    assert not any(f"refused {marker}" in trace.to_json() for trace in traces)
    for trace in traces:
        serialised = trace.to_json()
        for key in (ENV_KEY, FILE_KEY, WRONG_KEY):
            assert key not in serialised


def test_no_key_is_a_401_authentication_error_in_openais_shape(server):
    with pytest.raises(openai.AuthenticationError) as err:  # the client sends no Authorization header at all
        api(server, "placeholder").chat.completions.create(model="m", messages=MESSAGES, max_tokens=2,
                                                           extra_headers={"Authorization": openai.Omit()})
    assert_invalid_key(err, "missing API key")
    reply = httpx.post(server + "/v1/chat/completions", json={"messages": MESSAGES})  # no header at all
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    assert reply.headers["www-authenticate"] == "Bearer"


def test_another_authorization_scheme_is_401_saying_bearer_is_expected(server):
    reply = httpx.get(server + "/v1/models", headers={"Authorization": f"Basic {ENV_KEY}"})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    assert "Bearer" in reply.json()["error"]["message"] and ENV_KEY not in reply.text


def test_a_wrong_key_is_401_and_not_echoed(server):
    with pytest.raises(openai.AuthenticationError) as err:
        api(server, WRONG_KEY).chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert_invalid_key(err, "invalid API key")
    assert WRONG_KEY not in err.value.response.text
    for wrong in (ENV_KEY + "x", ENV_KEY[:-1], "unused"):  # near misses, and the placeholder clients often send
        with pytest.raises(openai.AuthenticationError):
            api(server, wrong).models.list()


def test_the_right_key_gets_chat_completions_whole_and_streamed(server):
    client = api(server, ENV_KEY)
    whole = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6)
    assert whole.object == "chat.completion" and whole.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_the_second_key_from_the_key_file_works_on_every_route(server):
    client = api(server, FILE_KEY)
    assert client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2).choices
    assert client.completions.create(model="m", prompt="Hello", max_tokens=2).choices
    assert client.responses.create(model="m", input="Hello", max_output_tokens=2).output
    assert len(client.models.list().data) == 1


def test_anthropic_style_x_api_key_and_any_case_bearer_are_accepted(server):
    body = {"messages": MESSAGES, "max_tokens": 2}
    reply = httpx.post(server + "/v1/chat/completions", json=body, headers={"x-api-key": FILE_KEY}, timeout=60)
    assert reply.status_code == 200 and reply.json()["object"] == "chat.completion"
    assert httpx.get(server + "/v1/models", headers={"x-api-key": WRONG_KEY}).status_code == 401
    assert httpx.get(server + "/v1/models", headers={"Authorization": f"bearer {ENV_KEY}"}).status_code == 200
    assert httpx.get(server + "/v1/models", headers={"Authorization": f"Basic {ENV_KEY}"}).status_code == 401


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/responses"), ("GET", "/v1/models"),
    ("GET", "/v1/not-yet-a-route"), ("GET", "/v1"), ("GET", "/v1/models/"), ("POST", "/tokenize"),
    ("POST", "/detokenize"),
])
def test_every_v1_route_needs_the_key_even_unknown_ones(server, method, path):
    reply = httpx.request(method, server + path, json={})
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "invalid_api_key"


def test_unknown_routes_keep_their_404_and_health_stays_open(server):
    reply = httpx.get(server + "/v1/not-yet-a-route", headers={"Authorization": f"Bearer {ENV_KEY}"})
    assert reply.status_code == 404 and reply.json()["error"]["type"] == "not_found_error"
    assert httpx.get(server + "/nothing").status_code == 404
    health = httpx.get(server + "/health")
    assert health.status_code == 200 and health.json()["auth"] == "api_key"
    assert ENV_KEY not in health.text and FILE_KEY not in health.text


def requests_counted(base: str, route: str, status: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for sample in family.samples:
            if sample.name == "chatpack_requests_total" and sample.labels == {"route": route, "status": status}:
                return sample.value
    return 0.0


def test_metrics_are_open_by_default_and_count_the_401s(server):
    assert httpx.get(server + "/metrics").status_code == 200  # no key
    before = requests_counted(server, "/v1/chat/completions", "401")
    for _ in range(2):
        assert httpx.post(server + "/v1/chat/completions", json={"messages": MESSAGES}).status_code == 401
    assert requests_counted(server, "/v1/chat/completions", "401") == before + 2


UNLOADED = "models:/never-loaded@champion"  # the routes below answer without a model


@contextlib.contextmanager
def served_app(**options):
    """The app over a model left unloaded (no model call needed), without tracing, in a TestClient."""
    app = create_app(ServedModel(UNLOADED), load_in_background=False, tracing=TraceSettings(enabled=False),
                     **options)
    with TestClient(app) as client:
        yield client


def test_metrics_auth_puts_metrics_behind_the_key_but_not_health():
    with served_app(api_keys=[ENV_KEY], metrics_auth=True) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/metrics", headers={"x-api-key": WRONG_KEY}).status_code == 401
        allowed = client.get("/metrics", headers={"Authorization": f"Bearer {ENV_KEY}"})
        assert allowed.status_code == 200 and "chatpack_requests_total" in allowed.text
        assert 'status="401"' in allowed.text and 'route="/metrics"' in allowed.text
        assert client.get("/health").status_code == 503  # open (the model is not loaded: 503, not 401)
    with pytest.raises(ValueError, match="metrics_auth"):
        create_app(ServedModel(UNLOADED), load_in_background=False, tracing=TraceSettings(enabled=False),
                   metrics_auth=True)


def test_a_websocket_under_v1_is_refused_without_the_key():
    from starlette.websockets import WebSocketDisconnect

    with served_app(api_keys=[ENV_KEY]) as client:
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/v1/realtime"):
            pass
        assert closed.value.code == 1008  # the guard's policy close, not the router's 1000 for an unknown route


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/messages/batches"])
def test_the_messages_routes_answer_401_in_anthropics_shape(path):
    with served_app(api_keys=[ENV_KEY]) as client:
        for headers, says in (({}, "missing API key"), ({"x-api-key": WRONG_KEY}, "invalid API key")):
            refused = client.post(path, json={}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json() == {"type": "error", "error": {"type": "authentication_error",
                                                                 "message": refused.json()["error"]["message"]}}
            assert says in refused.json()["error"]["message"] and WRONG_KEY not in refused.text
        # with the key: past the guard (the model is not loaded: 503, overloaded_error, in the same shape)
        allowed = client.post(path, json={}, headers={"x-api-key": ENV_KEY})
        assert allowed.status_code in (503, 404, 405), allowed.text
        assert allowed.json()["type"] == "error" and allowed.json()["error"]["type"] in (
            "overloaded_error", "not_found_error", "invalid_request_error")


def test_tokenize_and_detokenize_outside_v1_need_the_key_too():
    with served_app(api_keys=[ENV_KEY]) as client:
        for path in ("/tokenize", "/detokenize"):
            refused = client.post(path, json={"content": "hi"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            assert client.post(path, json={"content": "hi"}, headers={"x-api-key": ENV_KEY}).status_code == 503


def test_without_keys_everything_stays_open():
    with served_app() as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/health").json()["auth"] == "none"
        assert client.get("/metrics").status_code == 200


@pytest.fixture
def all_logs(caplog):
    """caplog at DEBUG for every logger, uvicorn's included (which may not propagate to the root)."""
    caplog.set_level(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in UVICORN_LOGGERS]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)


def test_no_key_ever_reaches_the_logs(server, all_logs):
    client = api(server, ENV_KEY)
    client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, stream=True))
    httpx.get(server + "/v1/models", headers={"x-api-key": FILE_KEY})
    with pytest.raises(openai.AuthenticationError):
        api(server, WRONG_KEY).models.list()
    time.sleep(0.3)  # the access line of the last request
    text = all_logs.text + "".join(repr(record.args) + str(record.__dict__) for record in all_logs.records)
    assert "POST /v1/chat/completions" in text and "401" in text  # the requests were logged ...
    for key in (ENV_KEY, FILE_KEY, WRONG_KEY):
        assert key not in text  # ... but no key


def test_startup_logs_say_how_the_endpoint_is_protected_never_the_key(caplog):
    caplog.set_level(logging.INFO)
    log_auth("0.0.0.0", [])
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "NO authentication" in warning[0].getMessage() and API_KEY_ENV in warning[0].getMessage()
    assert "--api_key_file" in warning[0].getMessage()
    caplog.clear()
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        log_auth(host, [])
    assert not caplog.records
    log_auth("0.0.0.0", [ENV_KEY, FILE_KEY])
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "API-key auth on: 2 keys" in caplog.text
    assert ENV_KEY not in caplog.text and FILE_KEY not in caplog.text


# --- the flags, through main() -------------------------------------------------------------------------------------

@pytest.fixture
def started(monkeypatch):
    """main() without a server: what serve() would have been called with."""
    calls = []
    monkeypatch.setattr(serve_step, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    return calls


def test_keys_from_the_variable_the_flag_and_the_file_are_all_accepted(started, monkeypatch, key_file):
    monkeypatch.setenv(API_KEY_ENV, f"  {WRONG_KEY} ")
    assert serve_step.main(["--model_uri", "models:/m@champion", "--api_key", "sk-flag", "--api_key_file",
                            str(key_file), "--metrics_auth", "true"]) == 0
    (args, kwargs), = started
    assert kwargs == {"api_keys": [WRONG_KEY, "sk-flag", ENV_KEY, FILE_KEY], "metrics_auth": True,
                      "exit_on_load_error": False}
    assert args[1] == "127.0.0.1"  # loopback unless told otherwise


def test_no_key_configured_serves_open(started):
    assert serve_step.main(["--model_uri", "models:/m@champion"]) == 0
    assert started[0][1] == {"api_keys": [], "metrics_auth": False, "exit_on_load_error": False}


@pytest.mark.parametrize(("file_text", "flags", "says"), [
    (None, [], "api_key_file: {path} does not exist"),
    ("# only a comment\n\n   \n", [], "api_key_file: {path} holds no keys"),
    ("good-key\nbad key\n", [], "api_key_file: {path} line 2: an API key must be printable ASCII"),
    ("", ["--api_key_file", ""], "metrics_auth: true needs an API key"),
    ("", ["--api_key_file", "", "--api_key", "two words"], "api_key: an API key must be printable ASCII"),
    ("", ["--api_key_file", "{dir}"], "api_key_file: {dir} is not a file"),
], ids=["missing", "empty", "bad-line", "metrics-without-key", "bad-flag-key", "directory"])
def test_flag_errors_exit_2_naming_the_flag(started, tmp_path, capsys, file_text, flags, says):
    path = tmp_path / "keys.txt"
    if file_text is not None:
        path.write_text(file_text)
    flags = [f.format(dir=tmp_path) for f in flags] or ["--api_key_file", str(path)]
    metrics = ["--metrics_auth", "true"] if "metrics_auth" in says else []
    assert serve_step.main(["--model_uri", "models:/m@champion", *flags, *metrics]) == 2
    err = capsys.readouterr().err
    assert says.format(path=path, dir=tmp_path) in err
    assert "bad key" not in err and "two words" not in err  # a key is never echoed, even a malformed one
    assert not started


def test_a_key_variable_set_but_empty_is_refused_not_served_open(started, monkeypatch, capsys):
    monkeypatch.setenv(API_KEY_ENV, "  ")  # e.g. a Kubernetes secret that expanded to nothing
    assert serve_step.main(["--model_uri", "models:/m@champion", "--host", "0.0.0.0"]) == 2
    assert f"{API_KEY_ENV}: set but empty" in capsys.readouterr().err
    assert not started


def test_vllm_style_api_key_flag_spelling_is_accepted(started):
    assert serve_step.main(["--model_uri", "models:/m@champion", "--api-key", "sk-dash"]) == 0
    assert started[0][1]["api_keys"] == ["sk-dash"]


def test_a_load_error_on_the_open_health_route_masks_url_credentials():
    from chatpack.serving.served_model import without_credentials

    text = without_credentials("MlflowException: API request to http://alice:hunter2pw@127.0.0.1:5999/api failed")
    assert "hunter2pw" not in text and "alice" not in text and "http://***@127.0.0.1:5999/api" in text
