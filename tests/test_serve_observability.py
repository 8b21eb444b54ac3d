"""What `serve` makes visible: one MLflow trace per chat request (linked to the served LoggedModel, with phase spans,
token counts, finish reason and options; text only when asked), and Prometheus metrics at /metrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import mlflow
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatpack.serving.observability.request_context import RequestContext
from chatpack.serving.observability.tracing import TraceRecord, TraceSettings, phases
from chatpack.serving.served_model import CountingLock
from steps import log_onnx_pyfunc, log_transformers
from tests.helpers import MESSAGES, client, logged, raw, serving, spans_by_name, traces_of


@pytest.fixture(scope="module")
def onnx_uri(fixture_fetch_run) -> str:
    return logged(log_onnx_pyfunc, fixture_fetch_run, "--max_new_tokens", "16")


def test_every_chat_request_is_a_trace_linked_to_the_served_model(onnx_uri):
    experiment = f"serve-{uuid.uuid4().hex[:8]}"
    served, running = serving(onnx_uri, TraceSettings(experiment=experiment))
    with running as base:
        api = client(base)
        whole = api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5, temperature=0, seed=3)
        streamed = list(api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6, stream=True))
        with pytest.raises(openai.BadRequestError):
            api.chat.completions.create(model="m", messages=[{"role": "wizard", "content": "hi"}])
    traces = traces_of(experiment, served.model_id, expected=3)
    assert [t.info.trace_metadata["mlflow.modelId"] for t in traces] == [served.model_id] * 3
    first, second, refused = traces

    root = spans_by_name(first)["chat.completions"]
    assert root.inputs["messages"] == MESSAGES and root.inputs["max_tokens"] == 5
    assert root.outputs["choices"][0]["message"]["content"] == whole.choices[0].message.content
    assert root.attributes["gen_ai.usage.input_tokens"] == whole.usage.prompt_tokens
    assert root.attributes["gen_ai.usage.output_tokens"] == 5
    assert root.attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert root.attributes["gen_ai.request.temperature"] == 0 and root.attributes["gen_ai.request.seed"] == 3
    assert root.attributes["chatpack.flavour"] == "onnx" and root.attributes["http.response.status_code"] == 200
    assert set(spans_by_name(first)) == {"chat.completions", "generate"}  # a batched reply: one generate span

    spans = spans_by_name(second)
    assert set(spans) == {"chat.completions", "tokenise", "prefill", "decode"}
    assert spans["tokenise"].end_time_ns <= spans["prefill"].start_time_ns <= spans["decode"].start_time_ns
    assert spans["decode"].end_time_ns <= spans["chat.completions"].end_time_ns
    content = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert spans["chat.completions"].outputs["choices"][0]["message"]["content"] == content
    assert spans["chat.completions"].attributes["chatpack.time_to_first_token_s"] > 0
    assert second.info.token_usage["output_tokens"] == 6

    root = spans_by_name(refused)["chat.completions"]
    assert root.attributes["http.response.status_code"] == 400
    assert root.outputs["error"].startswith("messages[0].role")
    assert root.inputs["messages"][0]["role"] == "wizard"


def test_text_completions_are_traced_with_their_text(onnx_uri):
    experiment = f"serve-{uuid.uuid4().hex[:8]}"
    served, running = serving(onnx_uri, TraceSettings(experiment=experiment))
    with running as base:
        api = client(base)
        whole = api.completions.create(model="m", prompt="Once upon a time", max_tokens=5)
        streamed = list(api.completions.create(model="m", prompt="Once upon a time", max_tokens=6, stream=True))
    first, second = traces_of(experiment, served.model_id, expected=2)
    assert spans_by_name(first)["completions"].outputs["choices"][0]["text"] == whole.choices[0].text != ""
    spans = spans_by_name(second)
    text = "".join(c.choices[0].text for c in streamed if c.choices)
    assert spans["completions"].outputs["choices"][0]["text"] == text != ""
    assert spans["completions"].attributes["chatpack.time_to_first_token_s"] > 0 and "decode" in spans


def test_text_can_be_left_out_and_tracing_switched_off(onnx_uri):
    quiet, off = f"quiet-{uuid.uuid4().hex[:8]}", f"off-{uuid.uuid4().hex[:8]}"
    for settings in (TraceSettings(experiment=quiet, record_text=False), TraceSettings(False, off)):
        _, running = serving(onnx_uri, settings)
        with running as base:
            client(base).chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    (trace,) = traces_of(quiet, expected=1)
    text = json.dumps([s.to_dict() for s in trace.data.spans])
    assert MESSAGES[1]["content"] not in text and "Be brief" not in text
    root = spans_by_name(trace)["chat.completions"]
    assert root.inputs["messages"] == [{"role": "system"}, {"role": "user"}]
    assert "content" not in root.outputs["choices"][0]["message"]
    assert root.attributes["gen_ai.usage.output_tokens"] == 3
    assert mlflow.get_experiment_by_name(off) is None


def metric_values(base: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_tokens_and_latency(onnx_uri):
    served, running = serving(onnx_uri, TraceSettings(enabled=False))
    with running as base:
        api = client(base)
        replies = [api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4) for _ in range(2)]
        chunks = list(api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, stream=True,
                                                  stream_options={"include_usage": True}))
        raw("POST", base + "/v1/chat/completions", b"{nope")
        values = metric_values(base)
    chat = "/v1/chat/completions"
    assert values[("chatpack_requests_total", (("route", chat), ("status", "200")))] == 3
    assert values[("chatpack_requests_total", (("route", chat), ("status", "400")))] == 1
    assert values[("chatpack_request_duration_seconds_count", (("route", chat),))] == 4
    assert values[("chatpack_time_to_first_token_seconds_count", ())] == 1  # seen for the streamed reply
    prompt = sum(r.usage.prompt_tokens for r in replies) + chunks[-1].usage.prompt_tokens
    assert values[("chatpack_prompt_tokens_total", ())] == prompt
    assert values[("chatpack_completion_tokens_total", ())] == 12
    assert values[("chatpack_requests_in_flight", ())] == 0 and values[("chatpack_queue_depth", ())] == 0
    assert values[("chatpack_model_load_seconds", ())] == pytest.approx(served.load_seconds)
    assert values[("chatpack_model_loaded", ())] == 1


def test_transformers_replies_get_the_phase_spans_too(fixture_fetch_run):
    uri = logged(log_transformers, fixture_fetch_run, "--max_new_tokens", "8")
    experiment = f"tf-{uuid.uuid4().hex[:8]}"
    served, running = serving(uri, TraceSettings(experiment=experiment))
    with running as base:
        client(base).chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
    (trace,) = traces_of(experiment, served.model_id, expected=1)
    assert set(spans_by_name(trace)) == {"chat.completions", "tokenise", "prefill", "decode"}
    assert spans_by_name(trace)["chat.completions"].attributes["chatpack.flavour"] == "transformers"


def test_phases_follow_the_marks_that_were_reached():
    context = RequestContext(route="/v1/chat/completions", method="POST")
    context.finish(400)
    assert phases(TraceRecord.of(context, None, None)) == []  # refused before the model
    for mark in ("model", "tokenised", "first_token"):
        context.mark(mark)
    context.finish(200)
    assert [name for name, *_ in phases(TraceRecord.of(context, "m-1", "models:/m-1"))] == ["tokenise", "prefill",
                                                                                         "decode"]


def test_queue_depth_counts_requests_waiting_for_a_one_at_a_time_model():
    lock, entered = CountingLock(), threading.Event()

    def wait() -> None:
        entered.set()
        with lock:
            pass

    with lock:
        thread = threading.Thread(target=wait)
        thread.start()
        entered.wait()
        deadline = time.time() + 5
        while lock.waiting != 1 and time.time() < deadline:
            time.sleep(0.01)
        assert lock.waiting == 1
    thread.join()
    assert lock.waiting == 0
