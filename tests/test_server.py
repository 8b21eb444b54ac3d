"""The OpenAI-compatible server, driven by the official openai client against real servers on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from chatpack.serving.served_model import ServedModel
from steps import log_onnx_pyfunc, log_transformers
from tests.conftest import free_port, wait_for_http
from tests.helpers import MESSAGES, client, logged, raw, serve_cli, serve_in_thread


@pytest.fixture(scope="module")
def onnx_server(fixture_fetch_run):
    uri = logged(log_onnx_pyfunc, fixture_fetch_run, "--max_new_tokens", "16")
    with serve_cli(uri) as base:
        yield base, uri


def test_non_streaming_reply_is_a_chat_completion_object(onnx_server):
    base, uri = onnx_server
    reply = client(base).chat.completions.create(model="any", messages=MESSAGES, max_tokens=6)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 6 and reply.usage.prompt_tokens > 0
    assert reply.model == uri.removeprefix("models:/")


def test_streamed_reply_joins_to_the_non_streamed_greedy_reply(onnx_server):
    base, _ = onnx_server
    api = client(base)
    whole = api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=12)
    chunks = list(api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=12, stream=True))
    assert len(chunks) >= 4
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # as OpenAI: usage only when stream_options.include_usage asks


def test_streamed_usage_comes_in_a_last_chunk_of_no_choices_with_include_usage(onnx_server):
    base, _ = onnx_server
    api = client(base)
    whole = api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=7)
    *chunks, counted = list(api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=7, stream=True,
                                                        stream_options={"include_usage": True}))
    assert chunks[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks)
    assert counted.choices == [] and counted.id == chunks[0].id and counted.object == "chat.completion.chunk"
    assert counted.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    off = list(api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=7, stream=True,
                                           stream_options={"include_usage": False}))
    assert off[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in off)


def test_n_choices_stream_one_after_another_as_the_whole_reply_gives_them(onnx_server):
    api = client(onnx_server[0])
    asked = {"model": "any", "messages": MESSAGES, "max_tokens": 6, "n": 3, "temperature": 1.0, "seed": 5}
    whole = api.chat.completions.create(**asked)
    *chunks, counted = list(api.chat.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {chunks[0].id} == {counted.id}
    order = [c.choices[0].index for c in chunks]
    assert order == sorted(order) and set(order) == {0, 1, 2}  # choice by choice
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == choice.finish_reason
    assert len({c.message.content for c in whole.choices}) > 1  # three seeds, three samples
    assert counted.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})


def test_usage_counts_the_prompt_tokens_reused_from_a_kv_row_as_cached(onnx_server):
    base, _ = onnx_server
    api = client(base)
    fresh = [{"role": "user", "content": f"Spell the word {uuid.uuid4().hex} backwards, then count its letters."}]
    first = api.chat.completions.create(model="any", messages=fresh, max_tokens=4)
    again = api.chat.completions.create(model="any", messages=fresh, max_tokens=4)
    prompt = first.usage.prompt_tokens
    assert again.usage.prompt_tokens == prompt and again.choices[0].message == first.choices[0].message
    assert first.usage.prompt_tokens_details.cached_tokens < prompt - 20  # at most the chat template's opening
    assert prompt - 2 <= again.usage.prompt_tokens_details.cached_tokens < prompt  # the whole prompt but its end
    *_, counted = api.chat.completions.create(model="any", messages=fresh, max_tokens=4, stream=True,
                                              stream_options={"include_usage": True})
    assert prompt - 2 <= counted.usage.prompt_tokens_details.cached_tokens < prompt
    response = api.responses.create(model="any", input=fresh[0]["content"], max_output_tokens=4)
    assert response.usage.input_tokens == prompt
    assert prompt - 2 <= response.usage.input_tokens_details.cached_tokens < prompt  # the Responses API's name


def test_stream_ends_with_done_over_raw_sse(onnx_server):
    base, _ = onnx_server
    body = json.dumps({"messages": MESSAGES, "max_tokens": 3, "stream": True}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [ln for ln in resp.read().decode().split("\n\n") if ln]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"messages": MESSAGES, "top_p": 0}, "top_p"),
        ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"messages": [{"role": "user", "content": "word " * 600}]}, "messages"),
        ({"messages": [{"role": "user", "content": "word " * 600}], "stream": True}, "messages"),
    ],
)
def test_bad_requests_raise_bad_request_error_naming_the_field(onnx_server, kwargs, param):
    base, _ = onnx_server
    with pytest.raises(openai.BadRequestError) as err:
        result = client(base).chat.completions.create(model="any", **kwargs)
        list(result) if kwargs.get("stream") else None
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert err.value.body["message"].startswith(param)


def test_malformed_json_and_unknown_routes_use_openai_error_shape(onnx_server):
    base, _ = onnx_server
    status, body = raw("POST", base + "/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = raw("GET", base + "/v1/nothing")
    assert status == 404 and body["error"]["type"] == "not_found_error"
    status, body = raw("POST", base + "/v1/chat/completions", json.dumps({"messages": MESSAGES, "extra": 1}).encode())
    assert status == 400 and body["error"]["param"] == "extra"


def test_models_route_lists_the_served_model(onnx_server):
    base, uri = onnx_server
    models = client(base).models.list()
    assert [m.id for m in models.data] == [uri.removeprefix("models:/")]


def test_transformers_flavour_is_served_too_with_one_chunk_streams(fixture_fetch_run):
    uri = logged(log_transformers, fixture_fetch_run, "--max_new_tokens", "8")
    with serve_cli(uri) as base:
        api = client(base)
        whole = api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=5)
        assert whole.usage.completion_tokens == 5
        chunks = list(api.chat.completions.create(model="any", messages=MESSAGES, max_tokens=5, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == "length"


def test_503_until_the_model_is_loaded(onnx_server):
    _, uri = onnx_server
    served = ServedModel(uri)
    with serve_in_thread(served, load=False) as base:
        status, body = raw("GET", base + "/health")
        assert status == 503 and body["status"] == "loading"
        with pytest.raises(openai.InternalServerError) as err:
            client(base).chat.completions.create(model="any", messages=MESSAGES)
        assert err.value.status_code == 503
        served.load()
        assert raw("GET", base + "/health")[0] == 200
        assert client(base).chat.completions.create(model="any", messages=MESSAGES, max_tokens=2).choices


def test_a_model_that_cannot_load_reports_on_health_or_exits_1_with_exit_on_load_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "steps.serve", "--model_uri", missing, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the default: the server stays up and says why on /health (503)
        deadline, body = time.time() + 90, {"status": "starting"}
        while body["status"] in ("starting", "loading") and time.time() < deadline and proc.poll() is None:
            try:
                status, body = raw("GET", f"http://127.0.0.1:{port}/health")
            except OSError:
                time.sleep(0.2)
        assert status == 503 and body["status"] == "error" and "no-such-model" in body["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    done = subprocess.run([sys.executable, "-m", "steps.serve", "--model_uri", missing, "--port", str(port),
                           "--exit_on_load_error", "true"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"error: {missing} did not load" in done.stderr and "Traceback" not in done.stderr.splitlines()[-1]


@pytest.fixture(scope="module")
def bundled_onnx_uri(bundled_fetch_run) -> str:
    return logged(log_onnx_pyfunc, bundled_fetch_run, "--model_name", "smol-serve")


LONG_REPLY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]


@pytest.mark.bundled
def test_full_queue_answers_429(bundled_onnx_uri):
    with serve_in_thread(ServedModel(bundled_onnx_uri, queue_size=1)) as base:
        wait_for_http(base + "/health", timeout=120)
        stream = client(base).chat.completions.create(model="any", messages=LONG_REPLY, max_tokens=400, stream=True)
        next(iter(stream))  # the first request is now generating and holds the only slot
        with pytest.raises(openai.RateLimitError) as err:
            client(base).chat.completions.create(model="any", messages=MESSAGES, max_tokens=2)
        assert err.value.status_code == 429
        stream.close()


@pytest.mark.bundled
def test_client_disconnect_stops_generation(bundled_onnx_uri):
    served = ServedModel(bundled_onnx_uri)
    with serve_in_thread(served) as base:
        wait_for_http(base + "/health", timeout=120)
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"messages": LONG_REPLY, "max_tokens": 400, "stream": True}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            received = b""
            while b"chat.completion.chunk" not in received:
                received += sock.recv(4096)
            assert served.in_flight == 1
        # 400 tokens take several seconds at this model's speed; a stopped generation frees the slot at once.
        deadline = time.time() + 2.0
        while served.in_flight and time.time() < deadline:
            time.sleep(0.05)
        assert served.in_flight == 0


def test_concurrent_requests_meet_in_one_batch_with_their_solo_replies(onnx_server):
    _, uri = onnx_server
    served = ServedModel(uri, queue_size=8)
    with serve_in_thread(served) as base:
        wait_for_http(base + "/health", timeout=120)
        engine = served.model.unwrap_python_model().engine  # the ONNX flavour's engine inside the pyfunc
        prompts = [[{"role": "user", "content": f"Question {i}: tell me something."}] for i in range(6)]
        api = client(base)
        solo = [api.chat.completions.create(model="m", messages=p, max_tokens=10).choices[0].message.content
                for p in prompts]
        steps = engine.stats["steps"]
        with ThreadPoolExecutor(max_workers=6) as pool:
            with engine.model_lock:  # keep the model busy until all six wait for a row
                futures = [pool.submit(api.chat.completions.create, model="m", messages=p, max_tokens=10)
                           for p in prompts]
                deadline = time.time() + 20
                while engine.batch.waiting < 6 and time.time() < deadline:
                    time.sleep(0.01)
            replies = [f.result().choices[0].message.content for f in futures]
        assert replies == solo
        assert engine.stats["largest_batch"] >= 6 and engine.stats["steps"] - steps < 10


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
@pytest.mark.parametrize(("body", "says"), [
    (b'{"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "input": "hi", "temperature": NaN}',
     "NaN is not a JSON value"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}], "prompt": "\\ud800", "input": "\\ud800"}',
     "unpaired UTF-16 surrogate"),
], ids=["nan", "lone-surrogate"])
def test_bodies_that_are_not_strict_json_text_are_400_on_every_route(onnx_server, route, body, says):
    base, _ = onnx_server
    status, reply = raw("POST", base + route, body)
    assert status == 400 and reply["error"]["message"].startswith("request body: ") and says in \
        reply["error"]["message"], reply


def test_a_non_streamed_request_whose_client_goes_away_is_cancelled(onnx_server):
    _, uri = onnx_server
    served = ServedModel(uri)
    with serve_in_thread(served) as base:
        wait_for_http(base + "/health", timeout=120)
        engine = served.engine
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"messages": MESSAGES, "max_tokens": 64}).encode()
        prompts = engine.stats["prompt_tokens"]
        with engine.model_lock:  # the model is busy: the request waits for a row
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                deadline = time.time() + 20
                while engine.batch.waiting < 1 and time.time() < deadline:
                    time.sleep(0.01)
                assert engine.batch.waiting == 1 and served.in_flight == 1
            time.sleep(1.0)  # the server notices the closed connection and cancels the waiting request
        deadline = time.time() + 10
        while served.in_flight and time.time() < deadline:
            time.sleep(0.02)
        assert served.in_flight == 0 and engine.batch.active == 0
        assert engine.stats["prompt_tokens"] == prompts  # it never took a row


def test_reuse_decoded_reaches_the_engine_from_serve_and_health_says_so(onnx_server):
    _, uri = onnx_server
    for setting in (None, True):
        served = ServedModel(uri, engine={"reuse_decoded": setting})
        with serve_in_thread(served) as base:
            wait_for_http(base + "/health", timeout=120)
            status, body = raw("GET", base + "/health")
            assert status == 200 and body["compute"]["reuse_decoded"] is bool(setting)  # default: exact reuse only
            assert body["compute"]["prefix_reuse"] is True and body["compute"]["paired_passes"] is False  # int4
