"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) and ``/tokenize``/``/detokenize`` on
``serve``, driven by the official ``anthropic`` SDK: over the bundled SmolLM2 (ONNX flavour: tool use, structured
output, stop sequences, API key, traces) and over the tiny fixture's transformers flavour. Raw events and replies are
also validated against the SDK's own types. Replies are greedy (``temperature: 0``) where a test compares two."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

import anthropic
import httpx
import jsonschema
import mlflow
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter

from chatpack.serving.app import create_app
from chatpack.serving.observability.tracing import TraceSettings
from chatpack.serving.served_model import ServedModel
from steps import log_onnx_pyfunc, log_transformers
from tests.helpers import app_in_thread, logged

KEY = f"sk-ant-{uuid.uuid4().hex}"
EXPERIMENT = f"messages-{uuid.uuid4().hex[:8]}"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                           "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}
TOOLS = [{"name": "get_weather", "description": "Get the current weather in a city", "input_schema": WEATHER}]
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
HELLO = [{"role": "user", "content": "List three colours, one per line."}]
GREEDY = {"temperature": 0}
EVENTS = TypeAdapter(RawMessageStreamEvent)


class Pick(BaseModel):
    colour: Literal["red", "green", "blue"]


@pytest.fixture(scope="module")
def smol(bundled_fetch_run):
    """The bundled SmolLM2 (ONNX) behind an API key, traced to this module's experiment: (base URL, ServedModel)."""
    uri = logged(log_onnx_pyfunc, bundled_fetch_run, "--model_name", "smol-messages", "--max_new_tokens", "64")
    served = ServedModel(uri)
    with app_in_thread(served, api_keys=[KEY], tracing=TraceSettings(experiment=EXPERIMENT)) as base:
        yield base, served


@pytest.fixture(scope="module")
def api(smol) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=smol[0], api_key=KEY, max_retries=0, timeout=120)  # sends x-api-key


def raw_events(base: str, body: dict) -> list:
    """The SSE stream of ``body`` (streamed): each ``event:`` name is its data's type; each event validates against
    the SDK's stream event types (a ``ping`` or ``error`` kept as its dict)."""
    with httpx.stream("POST", base + "/v1/messages", json={**body, "stream": True}, headers={"x-api-key": KEY},
                      timeout=120) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        frames = reply.read().decode().split("\n\n")
    events = []
    for text in filter(None, frames):
        name, data = text.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event if event["type"] in ("ping", "error") else EVENTS.validate_python(event))
    return events


def texts(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.mark.bundled
def test_create_answers_a_message_with_usage_and_a_stop_reason(api, smol):
    message = api.messages.create(model="any", max_tokens=24, messages=HELLO, system="Be brief.",
                                  metadata={"user_id": "user-1"}, service_tier="auto", extra_body=GREEDY)
    assert isinstance(message, Message) and message.id.startswith("msg_") and message.role == "assistant"
    assert message.model == smol[1].name and [b.type for b in message.content] == ["text"] and texts(message)
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    if message.stop_reason == "max_tokens":
        assert message.usage.output_tokens == 24
    counted = api.messages.count_tokens(model="any", messages=HELLO, system="Be brief.")
    assert message.usage.input_tokens == counted.input_tokens > 0
    assert message.usage.cache_read_input_tokens == 0 and message.usage.service_tier == "standard"
    again = api.messages.create(model="any", max_tokens=24, messages=HELLO, system=[
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}], extra_body=GREEDY)
    assert texts(again) == texts(message)  # greedy, and system blocks read as the same system prompt


@pytest.mark.bundled
def test_stream_helpers_give_the_whole_reply(api):
    whole = api.messages.create(model="any", max_tokens=20, messages=HELLO, extra_body=GREEDY)
    with api.messages.stream(model="any", max_tokens=20, messages=HELLO, extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == texts(final) == texts(whole)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    with api.messages.stream(model="any", max_tokens=20, messages=HELLO, extra_body=GREEDY) as stream:
        assert stream.get_final_text() == texts(whole)


@pytest.mark.bundled
def test_raw_events_follow_the_api_sequence(api, smol):
    events = raw_events(smol[0], {"model": "m", "max_tokens": 12, "messages": HELLO, **GREEDY})
    kinds = [e["type"] if isinstance(e, dict) else e.type for e in events]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    start, delta = events[0], events[-2]
    assert start.message.content == [] and start.message.stop_reason is None and start.message.usage.input_tokens > 0
    assert delta.delta.stop_reason in ("end_turn", "max_tokens") and delta.usage.output_tokens > 0
    sdk_kinds = [e.type for e in api.messages.create(model="m", max_tokens=12, messages=HELLO, stream=True,
                                                     extra_body=GREEDY)]
    assert sdk_kinds == [k for k in kinds if k != "ping"]  # the SDK drops pings


@pytest.mark.bundled
def test_stop_sequences_end_the_reply_and_are_named(api, smol):
    whole = texts(api.messages.create(model="m", max_tokens=40, messages=HELLO, extra_body=GREEDY))
    words = whole.split()
    stop = words[len(words) // 2]
    before = whole[:whole.index(stop)]
    stopped = api.messages.create(model="m", max_tokens=40, messages=HELLO, stop_sequences=["never-said", stop],
                                  extra_body=GREEDY)
    assert texts(stopped) == before and stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert 0 < stopped.usage.output_tokens < 40
    with api.messages.stream(model="m", max_tokens=40, messages=HELLO, stop_sequences=[stop],
                             extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == before
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert final.usage.output_tokens == stopped.usage.output_tokens
    unstopped = api.messages.create(model="m", max_tokens=40, messages=HELLO, stop_sequences=["never-said"],
                                    extra_body=GREEDY)
    assert texts(unstopped) == whole and unstopped.stop_sequence is None


@pytest.mark.bundled
def test_tool_use_and_a_tool_result_round_trip(api):
    called = api.messages.create(model="m", max_tokens=64, messages=ASK, tools=TOOLS,
                                 tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert called.stop_reason == "tool_use" and [b.type for b in called.content] == ["tool_use"]
    use = called.content[0]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER)
    turns = ASK + [{"role": "assistant", "content": called.content},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                 "content": [{"type": "text", "text": "18 C, sunny"}]}]}]
    answer = api.messages.create(model="m", max_tokens=40, messages=turns, tools=TOOLS, extra_body=GREEDY)
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    failed = turns[:-1] + [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                          "content": "no such city", "is_error": True}]}]
    assert api.messages.create(model="m", max_tokens=8, messages=failed, tools=TOOLS).content
    with pytest.raises(anthropic.BadRequestError) as err:
        api.messages.create(model="m", max_tokens=8, messages=ASK + [
            {"role": "assistant", "content": "Let me check."},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nobody", "content": "x"}]}],
            tools=TOOLS)
    assert "messages[2].content[0].tool_use_id: 'toolu_nobody' answers no tool_use block" in str(err.value)


@pytest.mark.bundled
def test_streamed_tool_input_arrives_as_input_json_deltas(api):
    choice = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    with api.messages.stream(model="m", max_tokens=64, messages=ASK, tools=TOOLS, tool_choice=choice) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [b.type for b in starts] == ["tool_use"] and starts[0].input == {}
    assert json.loads("".join(deltas)) == final.content[0].input
    assert final.stop_reason == "tool_use" and final.content[0].id == starts[0].id
    jsonschema.validate(final.content[0].input, WEATHER)


@pytest.mark.bundled
def test_structured_output_through_parse(api):
    parsed = api.messages.parse(model="m", max_tokens=24, output_format=Pick,
                                messages=[{"role": "user", "content": "Pick a colour."}])
    assert isinstance(parsed.parsed_output, Pick) and parsed.stop_reason == "end_turn"


@pytest.mark.bundled
def test_count_tokens_is_the_templated_prompt_with_tools(api, smol):
    plain = api.messages.count_tokens(model="m", messages=ASK).input_tokens
    with_tools = api.messages.count_tokens(model="m", messages=ASK, tools=TOOLS).input_tokens
    assert with_tools > plain > 0
    tokenized = httpx.post(smol[0] + "/tokenize", json={"messages": ASK}, headers={"x-api-key": KEY}).json()
    assert tokenized["count"] == plain == len(tokenized["tokens"])
    long = [{"role": "user", "content": "word " * 9000}]
    assert api.messages.count_tokens(model="m", messages=long).input_tokens > 8192  # counted, though over the context
    with pytest.raises(anthropic.BadRequestError) as err:
        api.messages.create(model="m", max_tokens=8, messages=long)
    assert err.value.body["error"]["message"].startswith("messages: the prompt is")


@pytest.mark.bundled
@pytest.mark.parametrize("kwargs, says", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
     "messages[0].content[0].type: 'image' blocks are not supported"),
    ({"messages": HELLO, "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking: only"),
    ({"messages": HELLO, "tools": [{"name": "bad name", "input_schema": WEATHER}]}, "tools[0].name: 'bad name'"),
    ({"messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}},
     "tool_choice.name: 'nope' is not one of the tools"),
    ({"messages": HELLO, "tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "tools[0].input_schema:"),
    ({"messages": HELLO, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"messages": HELLO + [{"role": "assistant", "content": "Red,"}]}, "messages[1]: the conversation ends with an "
                                                                       "assistant turn (prefill"),
    ({"messages": HELLO, "extra_body": {"temperature": 1.5}}, "temperature: must be between 0 and 1"),
    ({"messages": HELLO, "extra_body": {"frequency_penalty": 1}}, "frequency_penalty: unsupported field"),
    ({"messages": HELLO, "container": "container_1"}, "container: not supported"),
])
def test_bad_requests_raise_bad_request_error_in_anthropics_shape(api, kwargs, says):
    with pytest.raises(anthropic.BadRequestError) as err:
        api.messages.create(model="m", max_tokens=8, **kwargs)
    assert err.value.status_code == 400
    assert err.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": err.value.body["error"]["message"]}}
    assert says in err.value.body["error"]["message"]


@pytest.mark.bundled
def test_raw_bad_bodies_and_a_wrong_key(smol):
    base = smol[0]
    for body, says in (({"model": "m", "messages": HELLO}, "max_tokens: required"),
                       ({"model": "m", "max_tokens": 8}, "messages: required"), (["x"], "expected a JSON object")):
        reply = httpx.post(base + "/v1/messages", json=body, headers={"x-api-key": KEY})
        assert reply.status_code == 400 and says in reply.json()["error"]["message"]
    bad_json = httpx.post(base + "/v1/messages", content=b"{nope", headers={"x-api-key": KEY})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AuthenticationError) as err:
        anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0).messages.create(
            model="m", max_tokens=4, messages=HELLO)
    assert err.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                         "message": "invalid API key"}}
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0).messages.batches.list()


@pytest.mark.bundled
def test_an_error_mid_stream_is_an_error_event(smol, api, monkeypatch):
    base, served = smol
    honest = served.stream

    def failing(chat):
        for i, chunk in enumerate(honest(chat)):
            if i == 3:
                raise RuntimeError("the engine broke")
            yield chunk

    monkeypatch.setattr(served, "stream", failing)
    events = raw_events(base, {"model": "m", "max_tokens": 20, "messages": HELLO})
    assert events[-1] == {"type": "error", "error": {"type": "api_error",
                                                     "message": "generation failed: RuntimeError"}}
    with pytest.raises(anthropic.APIStatusError) as err:
        with api.messages.stream(model="m", max_tokens=20, messages=HELLO) as stream:
            list(stream.text_stream)
    assert "generation failed: RuntimeError" in str(err.value)


@pytest.mark.bundled
def test_a_silent_stream_gets_keepalive_pings(smol, monkeypatch):
    from chatpack.serving.messages import router

    base, served = smol
    honest = served.stream

    def slow(chat):
        for i, chunk in enumerate(honest(chat)):
            if i == 1:
                time.sleep(0.6)  # a long prefill
            yield chunk

    monkeypatch.setattr(served, "stream", slow)
    monkeypatch.setattr(router, "PING_SECONDS", 0.1)
    events = raw_events(base, {"model": "m", "max_tokens": 4, "messages": HELLO})
    kinds = [e["type"] if isinstance(e, dict) else e.type for e in events]
    assert kinds.count("ping") >= 3 and kinds[-1] == "message_stop" and kinds[0] == "message_start"


@pytest.mark.bundled
def test_tokenize_and_detokenize_in_vllm_and_llama_cpp_shapes(smol):
    base, headers = smol[0], {"x-api-key": KEY}

    def post(route: str, body: dict) -> dict:
        reply = httpx.post(base + route, json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        return reply.json()

    vllm = post("/tokenize", {"model": "m", "prompt": "Hello world", "return_token_strs": True})
    assert vllm["count"] == len(vllm["tokens"]) == 2 and vllm["max_model_len"] == 8192
    assert vllm["token_strs"] == ["Hello", " world"]
    llama = post("/tokenize", {"content": "Hello world", "with_pieces": True})
    assert llama["tokens"] == [{"id": i, "piece": p} for i, p in zip(vllm["tokens"], ["Hello", " world"])]
    assert post("/detokenize", {"tokens": vllm["tokens"]}) == {"prompt": "Hello world", "content": "Hello world"}
    chat = post("/tokenize", {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True})
    text = post("/detokenize", {"model": "m", "tokens": chat["tokens"]})["prompt"]
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")  # the template
    assert post("/tokenize", {"content": text})["tokens"] == chat["tokens"]  # special-token text reads as the token
    for route, body, says in (("/detokenize", {"tokens": [10 ** 6]}, "is not a token id of this model"),
                              ("/tokenize", {"messages": ASK, "chat_template": "{{ messages }}"}, "chat_template"),
                              ("/tokenize", {"prompt": "a", "content": "b"}, "not prompt and content")):
        reply = httpx.post(base + route, json=body, headers=headers)
        assert reply.status_code == 400 and says in reply.json()["error"]["message"]


@pytest.mark.bundled
def test_traces_and_metrics_label_the_new_routes(api, smol):
    base = smol[0]
    marker = f"Repeat: {uuid.uuid4().hex[:6]}"
    message = api.messages.create(model="m", max_tokens=6, messages=[{"role": "user", "content": marker}],
                                  stop_sequences=["zzz"], extra_body=GREEDY)
    api.messages.count_tokens(model="m", messages=HELLO)
    assert httpx.post(base + "/tokenize", json={"content": "hi"}, headers={"x-api-key": KEY}).status_code == 200
    deadline, found = time.time() + 120, []  # traces are exported by another process
    while time.time() < deadline and not found:
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
        traces = mlflow.search_traces(locations=[exp.experiment_id], return_type="list") if exp else []
        roots = [s for t in traces for s in t.data.spans if s.parent_id is None]  # none yet: still written
        found = [root for root in roots if marker in json.dumps(root.inputs)]
        time.sleep(0.5)
    assert found, "no trace of the /v1/messages request"
    root = found[0]
    assert root.name == "messages" and root.attributes["http.route"] == "/v1/messages"
    assert root.outputs["type"] == "message" and root.outputs["stop_reason"] == message.stop_reason
    assert root.outputs["content"][0]["text"] == texts(message)
    assert root.attributes["gen_ai.usage.output_tokens"] == message.usage.output_tokens
    assert root.attributes["gen_ai.request.stop_sequences"] == ["zzz"]
    metrics = httpx.get(base + "/metrics").text
    for route in ("/v1/messages", "/v1/messages/count_tokens", "/tokenize"):
        assert f'chatpack_requests_total{{route="{route}",status="200"}}' in metrics


def test_anthropic_error_shape_while_loading_and_for_unknown_routes():
    app = create_app(ServedModel("models:/never-loaded@x"), load_in_background=False,
                     tracing=TraceSettings(enabled=False))
    with TestClient(app) as client:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            loading = client.post(path, json={"model": "m", "max_tokens": 4, "messages": HELLO})
            assert loading.status_code == 503
            assert loading.json() == {"type": "error", "error": {"type": "overloaded_error",
                                                                 "message": "model is loading"}}
        assert client.get("/v1/messages").json()["error"]["type"] == "invalid_request_error"  # 405
        assert client.post("/v1/messages/nope").json() == {"type": "error", "error": {
            "type": "not_found_error", "message": "unknown route: POST /v1/messages/nope"}}
        assert client.post("/tokenize", json={"content": "hi"}).json()["error"]["type"] == "service_unavailable"
        listed = client.get("/v1/models").json()
        assert listed["data"][0]["type"] == "model" and listed["has_more"] is False


@pytest.fixture(scope="module")
def tiny_transformers(fixture_fetch_run):
    uri = logged(log_transformers, fixture_fetch_run, "--model_name", "tiny-messages-tf")
    with app_in_thread(ServedModel(uri), tracing=TraceSettings(enabled=False)) as base:
        yield base


def test_the_transformers_flavour_answers_messages_and_counts_tokens(tiny_transformers):
    base = tiny_transformers
    api = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=120)
    whole = api.messages.create(model="m", max_tokens=8, messages=HELLO, extra_body=GREEDY)
    assert whole.usage.input_tokens == api.messages.count_tokens(model="m", messages=HELLO).input_tokens > 0
    with api.messages.stream(model="m", max_tokens=8, messages=HELLO, extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == texts(whole)
    if len(texts(whole)) > 2:
        stop = texts(whole)[2]
        stopped = api.messages.create(model="m", max_tokens=8, messages=HELLO, stop_sequences=[stop],
                                      extra_body=GREEDY)
        assert stopped.stop_sequence == stop and texts(stopped) == texts(whole)[:texts(whole).index(stop)]
    for kwargs, field in (({"tools": TOOLS}, "tools"),
                          ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
                           "output_config.format")):
        with pytest.raises(anthropic.BadRequestError) as err:
            api.messages.create(model="m", max_tokens=8, messages=HELLO, **kwargs)
        assert err.value.body["error"]["message"].startswith(f"{field}: this model (transformers flavour) does not "
                                                             "implement it")
    tokens = httpx.post(base + "/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0 and tokens["max_model_len"] == 512
    back = httpx.post(base + "/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back["prompt"] == back["content"] and "Hello" in back["prompt"]
