"""Structured outputs and tool calls through ``serve`` on the bundled SmolLM2 (a template without tool support),
driven by real clients: the official ``openai`` client (``create`` with ``json_schema``, ``parse`` with a pydantic
model, tools with every ``tool_choice``, streaming, a tool round trip) and ``langchain-openai``; bad input answered
with 400 naming the field while the server keeps answering; the transformers flavour refusing what it cannot do."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from benchmarks.structured_cases import CASES, obj
from chatpack.serving.served_model import ServedModel
from steps import log_onnx_pyfunc, log_transformers
from tests.conftest import wait_for_http
from tests.helpers import client, logged, mlflow_models_serve, post, raw, serve_in_thread

pytestmark = pytest.mark.bundled
WEATHER = obj({"city": {"type": "string"}}, {"unit": {"enum": ["celsius", "fahrenheit"]}})
TIME = obj({"timezone": {"type": "string"}})
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Get the current time in a timezone",
                                           "parameters": TIME}}]
PARAMETERS = {"get_weather": WEATHER, "get_time": TIME}
ASK_WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]


class City(BaseModel):
    city: str
    country: str
    continent: Literal["Africa", "America", "Asia", "Europe", "Oceania"]


@pytest.fixture(scope="module")
def model_uri(bundled_fetch_run) -> str:
    return logged(log_onnx_pyfunc, bundled_fetch_run, "--model_name", "smol-structured", "--max_new_tokens", "96")


@pytest.fixture(scope="module")
def base(model_uri):
    with serve_in_thread(ServedModel(model_uri)) as url:
        wait_for_http(url + "/health", timeout=120)
        yield url


def schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def check_calls(message, finish_reason: str) -> list:
    """The message's tool calls: listed functions, arguments valid against their parameters."""
    assert finish_reason == "tool_calls" and message.content is None and message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    return message.tool_calls


def test_json_schema_replies_that_stop_parse_and_validate(base):
    api, stopped = client(base), 0
    for prompt, schema in CASES:
        reply = api.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                            response_format=schema_format(schema), max_tokens=100)
        choice = reply.choices[0]
        assert choice.finish_reason in ("stop", "length")
        if choice.finish_reason == "stop":
            stopped += 1
            jsonschema.validate(json.loads(choice.message.content), schema)
    assert len(CASES) >= 20 and stopped >= len(CASES) * 2 // 3  # a 135M model repeats digits now and then


def test_parse_with_a_pydantic_model_returns_the_object_streamed_json_too(base):
    api = client(base)
    parsed = api.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Where is Paris?"}],
                                        response_format=City).choices[0]
    assert parsed.finish_reason == "stop" and isinstance(parsed.message.parsed, City)
    chunks = list(api.chat.completions.create(model="m", messages=[{"role": "user", "content": "Where is Paris?"}],
                                              response_format=schema_format(City.model_json_schema()), stream=True))
    assert City.model_validate_json("".join(c.choices[0].delta.content or "" for c in chunks))
    obj_reply = api.chat.completions.create(model="m", messages=ASK_WEATHER, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj_reply.choices[0].message.content), dict)


@pytest.mark.parametrize(("choice", "names"), [
    ("required", {"get_weather", "get_time"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
])
def test_forced_tool_calls_name_listed_functions_with_valid_arguments(base, choice, names):
    reply = client(base).chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice=choice)
    calls = check_calls(reply.choices[0].message, reply.choices[0].finish_reason)
    assert {c.function.name for c in calls} <= names


def test_auto_none_and_single_call_choices(base):
    api = client(base)
    auto = api.chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice="auto")
    if auto.choices[0].message.tool_calls:
        check_calls(auto.choices[0].message, auto.choices[0].finish_reason)
    else:
        assert auto.choices[0].message.content and auto.choices[0].finish_reason in ("stop", "length")
    none = api.chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content
    both = [{"role": "user", "content": "What's the weather in Paris and the time in Tokyo?"}]
    single = api.chat.completions.create(model="m", messages=both, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False)
    assert len(check_calls(single.choices[0].message, single.choices[0].finish_reason)) == 1


def test_streamed_tool_calls_arrive_in_openai_delta_form(base):
    api = client(base)
    stream = api.chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                         stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    *chunks, counted = list(stream)
    for chunk in chunks:
        for part in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": part.id, "name": part.function.name, "arguments": ""})
            entry["arguments"] += part.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and chunks[-1].usage is None
    assert counted.choices == [] and counted.usage.completion_tokens > 0  # include_usage: its own last chunk
    whole = api.chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice="required")
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]  # greedy: the same


def test_a_repeated_call_is_never_returned_when_max_tokens_cuts_the_reply(base):
    """A small model repeats its call until max_tokens: a cut inside the repeat must not bring it back (whole or
    streamed), while a longer budget ends at the repeat with tool_calls."""
    api = client(base)
    city_only = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather",
                                                   "parameters": obj({"city": {"type": "string"}})}}]
    kwargs = {"model": "m", "messages": ASK_WEATHER, "tools": city_only, "tool_choice": "required"}
    ended = api.chat.completions.create(max_tokens=200, **kwargs).choices[0]
    assert ended.finish_reason == "tool_calls" and len(ended.message.tool_calls) == 1
    expected = [(c.function.name, c.function.arguments) for c in ended.message.tool_calls]
    for max_tokens in (40, 50, 60):
        whole = api.chat.completions.create(max_tokens=max_tokens, **kwargs).choices[0]
        assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls] == expected, max_tokens
        calls: dict[int, list[str]] = {}
        for chunk in api.chat.completions.create(max_tokens=max_tokens, stream=True, **kwargs):
            for part in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                entry = calls.setdefault(part.index, ["", ""])
                entry[0] += part.function.name or ""
                entry[1] += part.function.arguments or ""
        assert [tuple(c) for c in calls.values()] == expected, max_tokens  # no delta of the repeat either


def test_a_tool_round_trip_renders_and_continues(base):
    api = client(base)
    first = api.chat.completions.create(model="m", messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False)
    message = first.choices[0].message
    (call,) = check_calls(message, first.choices[0].finish_reason)
    conversation = [*ASK_WEATHER, message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "22 C and sunny"}]
    second = api.chat.completions.create(model="m", messages=conversation, tools=TOOLS)
    reply = second.choices[0]
    assert reply.finish_reason in ("stop", "length", "tool_calls")
    if reply.message.tool_calls:
        check_calls(reply.message, reply.finish_reason)
    else:
        assert reply.message.content


def test_langchain_structured_output_and_bound_tools(base):
    chat = ChatOpenAI(base_url=base + "/v1", api_key="unused", model="m", max_retries=0, timeout=60, temperature=0)
    assert isinstance(chat.with_structured_output(City, method="json_schema").invoke("Where is Paris?"), City)
    assert isinstance(chat.with_structured_output(City, method="function_calling").invoke("Where is Paris?"), City)

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    message = chat.bind_tools([get_weather], tool_choice="required").invoke("What's the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)


BAD = [
    ({"response_format": schema_format({"type": "objekt"})}, "response_format"),
    ({"response_format": {"type": "grammar", "grammar": "start: ("}}, "response_format"),
    ({"response_format": schema_format({"$ref": "#/$defs/missing"})}, "response_format"),
    ({"tools": [{"type": "function", "function": {"parameters": WEATHER}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice"),
    ({"response_format": schema_format({"enum": ["x" * 70_000]})}, "response_format"),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_structured_input_is_a_400_naming_the_field_and_the_server_keeps_answering(base, extra, param):
    for stream in (False, True):
        status, body = raw("POST", base + "/v1/chat/completions", json.dumps(
            {"messages": ASK_WEATHER, "stream": stream, **extra}).encode())
        assert status == 400 and body["error"]["param"] == param, body
        assert body["error"]["message"].startswith(param)
    assert client(base).chat.completions.create(model="m", messages=ASK_WEATHER, max_tokens=2).choices


@pytest.mark.e2e
def test_the_transformers_flavour_refuses_what_it_cannot_do_naming_the_field(fixture_fetch_run):
    served = ServedModel(logged(log_transformers, fixture_fetch_run, "--max_new_tokens", "4"))
    with serve_in_thread(served) as url:
        wait_for_http(url + "/health", timeout=120)
        api = client(url)
        for extra, param in [({"response_format": {"type": "json_object"}}, "response_format"),
                             ({"tools": TOOLS}, "tools"), ({"tools": TOOLS, "tool_choice": "none"}, "tools")]:
            with pytest.raises(openai.BadRequestError) as err:
                api.chat.completions.create(model="m", messages=ASK_WEATHER, **extra)
            assert err.value.body["param"] == param and "does not implement" in err.value.body["message"]
        assert api.chat.completions.create(model="m", messages=ASK_WEATHER, response_format={"type": "text"},
                                           tool_choice="none").choices


@pytest.mark.e2e
def test_mlflow_models_serve_passes_every_structured_field_to_the_model(model_uri):
    """The signature declares response_format, tools, tool_choice and parallel_tool_calls (MLflow drops undeclared
    fields): through the stock scoring server they are enforced as through ``serve``."""
    proc, url = mlflow_models_serve(model_uri)
    try:
        status, replies, _ = post(url, {"messages": ASK_WEATHER, "response_format": schema_format(WEATHER)})
        assert status == 200 and jsonschema.validate(json.loads(replies[0]["choices"][0]["message"]["content"]),
                                                     WEATHER) is None
        status, replies, _ = post(url, {"messages": ASK_WEATHER, "tools": TOOLS, "parallel_tool_calls": False,
                                        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
        choice = replies[0]["choices"][0]
        assert status == 200 and choice["finish_reason"] == "tool_calls", replies
        (call,) = choice["message"]["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
        follow_up = [*ASK_WEATHER, choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
        status, replies, _ = post(url, {"messages": follow_up, "tools": TOOLS, "tool_choice": "none", "max_tokens": 8})
        assert status == 200 and replies[0]["choices"][0]["message"]["content"] is not None, replies
        status, body, _ = post(url, {"messages": ASK_WEATHER, "tools": [{"type": "function", "function": {}}]})
        assert status == 400 and "tools[0].function.name: required" in body["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
