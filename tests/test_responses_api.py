"""``POST /v1/responses`` (OpenAI's Responses API) on ``serve`` over the tiny fixture model, driven by the official
``openai`` client (``responses.create`` streamed and not, the ``responses.stream`` helper, ``responses.parse``); every
raw reply and event is also validated against the SDK's own types (required fields included). Replies of a random
model are random: tests constrain them (enums) where they need a reply that ends, and check shapes and invariants
otherwise."""

from __future__ import annotations

import json
import urllib.request
import uuid
from enum import Enum

import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from chatpack.serving.observability.tracing import TraceSettings
from chatpack.serving.served_model import ServedModel
from steps import log_onnx_pyfunc, log_transformers
from tests.conftest import wait_for_http
from tests.helpers import client, logged, raw, serve_in_thread, serving, spans_by_name, traces_of

UNIT = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "ok": {"type": "boolean"}},
        "required": ["unit", "ok"], "additionalProperties": False}
PICK = {"type": "object", "properties": {"choice": {"enum": ["a", "b", "c"]}}, "required": ["choice"],
        "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                           "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
          "parameters": WEATHER},
         {"type": "function", "name": "get_time", "description": "Get the current time in a timezone",
          "parameters": TIME}]
PARAMETERS = {"get_weather": WEATHER, "get_time": TIME}
ASK = "What's the weather in Paris?"
EVENTS = TypeAdapter(ResponseStreamEvent)


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Setting(BaseModel):
    unit: Unit
    ok: bool


@pytest.fixture(scope="module")
def tiny_uri(fixture_fetch_run) -> str:
    return logged(log_onnx_pyfunc, fixture_fetch_run, "--model_name", "tiny-responses", "--max_new_tokens", "40")


@pytest.fixture(scope="module")
def base(tiny_uri):
    with serve_in_thread(ServedModel(tiny_uri)) as url:
        wait_for_http(url + "/health", timeout=120)
        yield url


@pytest.fixture(scope="module")
def smol(bundled_fetch_run):
    """The bundled SmolLM2 (2,048-token context): the tool prompt alone is longer than the fixture's 512 tokens."""
    uri = logged(log_onnx_pyfunc, bundled_fetch_run, "--model_name", "smol-responses", "--max_new_tokens", "96")
    with serve_in_thread(ServedModel(uri)) as url:
        wait_for_http(url + "/health", timeout=120)
        yield url


def post(base: str, body: dict) -> dict:
    status, reply = raw("POST", base + "/v1/responses", json.dumps(body).encode())
    assert status == 200, reply
    Response.model_validate(reply)
    return reply


def raw_events(base: str, body: dict) -> list:
    """The SSE stream of ``body`` (streamed), each event checked: its ``event:`` name is its type, it validates
    against the SDK's event types, sequence numbers count up from 0."""
    request = urllib.request.Request(base + "/v1/responses", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as resp:
        frames = resp.read().decode().split("\n\n")
    events = []
    for text in filter(None, frames):
        name, data = text.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(EVENTS.validate_python(event))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


def check_calls(output: list) -> list:
    calls = [item for item in output if item.type == "function_call"]
    assert calls
    for call in calls:
        assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])
    return calls


def test_plain_string_input_is_a_response_with_output_text(base):
    body = post(base, {"model": "m", "input": "Say something.", "metadata": {"case": "plain"}})
    reply = client(base).responses.create(model="m", input="Say something.")
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.model == client(base).models.list().data[0].id
    assert reply.output_text == body["output"][0]["content"][0]["text"]  # greedy: the same reply
    assert body["metadata"] == {"case": "plain"} and body["output"][0]["type"] == "message"
    usage = reply.usage
    assert usage.input_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    if reply.status == "incomplete":
        assert reply.incomplete_details.reason == "max_output_tokens" and usage.output_tokens == 40
    else:
        assert reply.status == "completed" and reply.incomplete_details is None


def test_message_items_and_instructions_become_the_conversation(base):
    short = post(base, {"input": "Hi"})
    items = [{"role": "developer", "content": "Answer briefly."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "Blue.", "annotations": []}]},
             {"role": "user", "content": "Another one."}]
    reply = client(base).responses.create(model="m", instructions="You are terse.", input=items, max_output_tokens=8)
    assert reply.instructions == "You are terse." and reply.max_output_tokens == 8
    assert reply.usage.input_tokens > short["usage"]["input_tokens"] + 10 and reply.usage.output_tokens <= 8
    assert isinstance(reply.output_text, str)


def test_streamed_text_events_arrive_in_openai_order_and_add_up(base):
    events = raw_events(base, {"input": "Say something.", "max_output_tokens": 12})
    kinds = [e.type for e in events]
    deltas = [i for i, k in enumerate(kinds) if k == "response.output_text.delta"]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"] and deltas == list(range(4, 4 + len(deltas))) and deltas
    assert kinds[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", "response.incomplete"]
    final = events[-1].response
    text = "".join(events[i].delta for i in deltas)
    assert text == events[-4].text == final.output_text and final.usage.output_tokens == 12
    assert final.incomplete_details.reason == "max_output_tokens" and final.output[0].status == "incomplete"
    whole = client(base).responses.create(model="m", input="Say something.", max_output_tokens=12)
    assert whole.output_text == text  # greedy: streamed and whole replies agree
    streamed = list(client(base).responses.create(model="m", input="Say something.", max_output_tokens=12,
                                                  stream=True))
    assert [e.type for e in streamed] == kinds and streamed[-1].response.output_text == text


def test_json_schema_format_replies_parse_and_the_stream_helper_returns_the_object(base):
    fmt = {"type": "json_schema", "name": "setting", "schema": UNIT, "strict": True}
    reply = client(base).responses.create(model="m", input="Pick a unit.", text={"format": fmt})
    assert reply.status == "completed" and reply.text.format.type == "json_schema"
    jsonschema.validate(json.loads(reply.output_text), UNIT)
    parsed = client(base).responses.parse(model="m", input="Pick a unit.", text_format=Setting)
    assert isinstance(parsed.output_parsed, Setting)
    with client(base).responses.stream(model="m", input="Pick a unit.", text_format=Setting) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed" and final.output_parsed == parsed.output_parsed
    obj = post(base, {"input": "Pick a unit.", "text": {"format": {"type": "json_object"}}, "max_output_tokens": 24})
    if obj["status"] == "completed":
        assert isinstance(json.loads(obj["output"][0]["content"][0]["text"]), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_time"}])
@pytest.mark.bundled
def test_function_tools_answer_function_call_items_with_valid_arguments(smol, choice):
    reply = client(smol).responses.create(model="m", input=ASK, tools=TOOLS, tool_choice=choice)
    calls = check_calls(reply.output)
    assert reply.status == "completed" and all(item.type == "function_call" for item in reply.output)
    if isinstance(choice, dict):
        assert {c.name for c in calls} == {"get_time"} and reply.tool_choice.name == "get_time"
    single = client(smol).responses.create(model="m", input=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False)
    assert len(check_calls(single.output)) == 1 and single.parallel_tool_calls is False
    none = post(smol, {"input": ASK, "tools": TOOLS, "tool_choice": "none", "max_output_tokens": 4})
    assert [item["type"] for item in none["output"]] == ["message"]


@pytest.mark.bundled
def test_streamed_function_calls_arrive_as_function_call_events(smol):
    body = {"input": ASK, "tools": TOOLS, "tool_choice": "required"}
    events = raw_events(smol, body)
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed" and "response.function_call_arguments.delta" in kinds
    final = events[-1].response
    calls = check_calls(final.output)
    for index, call in enumerate(calls):
        mine = [e for e in events if getattr(e, "output_index", None) == index]
        assert [e.type for e in mine][0] == "response.output_item.added" and mine[0].item.type == "function_call"
        assert [e.type for e in mine][-2:] == ["response.function_call_arguments.done", "response.output_item.done"]
        deltas = "".join(e.delta for e in mine if e.type == "response.function_call_arguments.delta")
        assert deltas == mine[-2].arguments == call.arguments and mine[-1].item.id == call.id == mine[0].item.id
    whole = client(smol).responses.create(model="m", **body)
    assert [(c.name, c.arguments) for c in check_calls(whole.output)] == [(c.name, c.arguments) for c in calls]
    with client(smol).responses.stream(model="m", input=ASK, tools=TOOLS, tool_choice="required") as stream:
        assert [c.arguments for c in check_calls(stream.get_final_response().output)] == [c.arguments for c in calls]


@pytest.mark.bundled
def test_a_tool_round_trip_sends_calls_and_outputs_back_as_input_items(smol):
    api = client(smol)
    first = api.responses.create(model="m", input=ASK, tools=TOOLS, tool_choice="required",
                                 parallel_tool_calls=False)
    (call,) = check_calls(first.output)
    items = [{"role": "user", "content": ASK}, call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id, "output": "done"}]
    second = api.responses.create(model="m", input=items, tools=TOOLS, max_output_tokens=8)
    assert second.status in ("completed", "incomplete") and second.output
    assert second.usage.input_tokens > first.usage.input_tokens


def test_max_output_tokens_cuts_the_reply_short_as_an_incomplete_response(base):
    reply = client(base).responses.create(model="m", input="Tell me a long story.", max_output_tokens=3)
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 3 and reply.output[-1].status == "incomplete"


BAD = [
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "store": True}, "store"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "seed": 3}, "seed"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
    ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": [{"type": "function_call", "name": "pick", "arguments": "{}"}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]}, "input"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": "ten"}, "max_output_tokens"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "instructions": 5}, "instructions"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": UNIT}}}, "text.format"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "objekt"}}}},
     "text.format"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "x", "tools": [{"type": "function", "parameters": PICK}]}, "tools"),
    ({"input": "x", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "pick", "arguments": "{not json"}]}, "input"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s"}}}, "text.format"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[f"{b[1]}{i}" for i, b in enumerate(BAD)])
def test_bad_requests_are_400_naming_the_responses_field(base, body, param):
    for stream in (False, True):
        status, reply = raw("POST", base + "/v1/responses", json.dumps({**body, "stream": stream}).encode())
        assert status == 400 and reply["error"]["param"] == param, reply
        assert reply["error"]["message"].startswith(param) and reply["error"]["type"] == "invalid_request_error"
    assert client(base).responses.create(model="m", input="x", max_output_tokens=2).output


def test_stream_options_are_taken_with_a_stream_only(base):
    body = {"input": "x", "max_output_tokens": 2, "stream_options": {"include_obfuscation": False}}
    status, reply = raw("POST", base + "/v1/responses", json.dumps(body).encode())
    assert status == 400 and reply["error"]["param"] == "stream_options", reply
    assert raw_events(base, body)[-1].type in ("response.completed", "response.incomplete")  # streamed: taken


def test_errors_of_the_chat_checks_name_the_responses_path(base):
    def message(body: dict) -> str:
        status, reply = raw("POST", base + "/v1/responses", json.dumps(body).encode())
        assert status == 400, reply
        return reply["error"]["message"]

    items = [{"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "output_text", "text": "y"}]}]
    assert message({"input": items}).startswith("input[1].content[0].type: 'output_text' is not supported")
    assert message({"input": "x", "text": {"format": {"type": "json_schema", "schema": UNIT}}}).startswith(
        "text.format.name: required")
    assert message({"input": "x", "max_output_tokens": 0}).startswith("max_output_tokens: must be >= 1, got 0")
    # Refusals of a value say which value is accepted and show the one sent.
    assert message({"input": "x", "include": ["message.output_text.logprobs"]}).startswith(
        "include: only [] is accepted (extra output data (logprobs, reasoning, sources) is not produced), got "
        '["message.output_text.logprobs"]')
    assert message({"input": "x", "reasoning": {"effort": "low"}}).startswith(
        'reasoning: only {} is accepted (the served models do not reason before answering), got {"effort": "low"}')
    assert message({"input": "x", "store": True}) == ("store: only false is accepted (responses are not stored here "
                                                      "(nothing can be retrieved later)), got True")
    assert message({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": "array"}}]}
                   ).startswith("tools[0].parameters: must be a JSON schema of type 'object'")
    assert message({"input": "x", "tools": [{"type": "function", "name": "f", "defer_loading": True}]}).startswith(
        "tools[0].defer_loading: unsupported field")
    assert message({"input": "x", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}).startswith(
        "tool_choice.name: 'nope' is not one of the tools (get_weather, get_time)")
    with pytest.raises(openai.BadRequestError) as err:
        client(base).responses.create(model="m", input="x", store=True)
    assert err.value.body["param"] == "store"


def test_responses_requests_are_traced_and_counted(tiny_uri):
    experiment = f"responses-{uuid.uuid4().hex[:8]}"
    served, running = serving(tiny_uri, TraceSettings(experiment=experiment))
    with running as url:
        whole = client(url).responses.create(model="m", input="Say something.", max_output_tokens=5)
        streamed = list(client(url).responses.create(model="m", input="Say something.", max_output_tokens=6,
                                                     stream=True))
        raw("POST", url + "/v1/responses", json.dumps({"input": "x", "store": True}).encode())
        with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
            metrics = resp.read().decode()
    traces = traces_of(experiment, served.model_id, expected=3)
    first, second, refused = (spans_by_name(t)["responses"] for t in traces)
    assert first.inputs["messages"] == [{"role": "user", "content": "Say something."}]
    assert first.inputs["max_tokens"] == 5 and first.attributes["http.route"] == "/v1/responses"
    assert first.outputs["output"][0]["content"][0]["text"] == whole.output_text
    assert first.outputs["status"] == "incomplete" and first.outputs["usage"]["output_tokens"] == 5
    assert second.outputs["output"][0]["content"][0]["text"] == streamed[-1].response.output_text
    assert second.attributes["chatpack.stream"] is True
    assert refused.attributes["http.response.status_code"] == 400 and refused.outputs["error"].startswith("store")
    assert 'chatpack_requests_total{route="/v1/responses",status="200"} 2.0' in metrics
    assert 'chatpack_requests_total{route="/v1/responses",status="400"} 1.0' in metrics


@pytest.mark.e2e
def test_the_transformers_flavour_answers_text_and_refuses_formats_and_tools_by_their_responses_name(
        fixture_fetch_run):
    served = ServedModel(logged(log_transformers, fixture_fetch_run, "--max_new_tokens", "4"))
    with serve_in_thread(served) as url:
        wait_for_http(url + "/health", timeout=120)
        api = client(url)
        assert api.responses.create(model="m", input="Say something.").usage.output_tokens > 0
        events = [e.type for e in api.responses.create(model="m", input="Say something.", stream=True)]
        assert events[0] == "response.created" and events[-1] in ("response.completed", "response.incomplete")
        for extra, param in [({"text": {"format": {"type": "json_object"}}}, "text.format"),
                             ({"tools": TOOLS}, "tools"),
                             ({"input": [{"type": "function_call", "call_id": "c", "name": "pick", "arguments": "{}"},
                                         {"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input")]:
            with pytest.raises(openai.BadRequestError) as err:
                api.responses.create(model="m", **{"input": "x", **extra})
            assert err.value.body["param"] == param and err.value.body["message"].startswith(param)
            assert "does not implement" in err.value.body["message"]
