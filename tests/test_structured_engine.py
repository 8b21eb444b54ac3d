"""Constrained decoding in the ONNX ``PythonModel`` on the tiny fixture model (random weights: whatever it says, the
constraint decides the shape): JSON replies that validate, tool calls through a template that takes tools, compile
errors that name the field before the model is taken, and constrained requests beside the batching queue."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import types

import jsonschema
import pytest

from chatpack.flavours.onnx_chat.pyfunc_model import OnnxChatModel
from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError
from chatpack.sources.fetch import fetched_model

HI = [{"role": "user", "content": "hi"}]
BOUNDED = [  # schemas a random model cannot run on forever in: every value is bounded
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "n": {"type": "integer",
                                                                                        "minimum": 0, "maximum": 9}},
     "required": ["unit", "n"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                                      "inner": {"type": "object", "properties": {"x": {"type": "boolean"}},
                                                "required": ["x"]}},
     "required": ["tags", "inner"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["code"]},
]
UNIT = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}
TOOLS = [{"type": "function", "function": {"name": "w", "parameters": UNIT}}]
# A template that takes tools (Qwen-style), so tools need no system prompt and fit the fixture's 512-token context.
TOOLS_TEMPLATE = """{%- if tools %}<|system|>
{%- for tool in tools %}{{ tool.function.name }}{%- endfor %}<|end|>
{%- endif %}{%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls %}<|assistant|>
{%- for call in message.tool_calls %}<tool_call>{{ call.function.arguments | tojson }}</tool_call>{%- endfor %}<|end|>
{%- elif message.role == 'tool' %}<|user|><tool_response>{{ message.content }}</tool_response><|end|>
{%- else %}<|{{ message.role }}|>{{ message.content }}<|end|>{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>{%- endif %}"""


def load(onnx_dir, max_new_tokens: int = 48) -> OnnxChatModel:
    model = OnnxChatModel()
    model.load_context(types.SimpleNamespace(model_config={"max_new_tokens": max_new_tokens},
                                             artifacts={"onnx_model": str(onnx_dir)}))
    return model


@pytest.fixture(scope="module")
def onnx_dir(fixture_fetch_run):
    return fetched_model(fixture_fetch_run).onnx_dir


@pytest.fixture(scope="module")
def model(onnx_dir) -> OnnxChatModel:
    return load(onnx_dir)


@pytest.fixture(scope="module")
def tools_model(onnx_dir, tmp_path_factory) -> OnnxChatModel:
    folder = tmp_path_factory.mktemp("tools-template") / "onnx"
    shutil.copytree(onnx_dir, folder)
    (folder / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return load(folder, max_new_tokens=240)  # the fixture's tokens are about one character each


def reply(model: OnnxChatModel, **body) -> dict:
    return model.predict(None, {"messages": HI, **body})[0]["choices"][0]


@pytest.mark.parametrize("schema", BOUNDED, ids=range(len(BOUNDED)))
def test_json_schema_replies_parse_and_validate_whatever_the_weights(model, schema):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    for temperature in (0, 1.0):
        choice = reply(model, response_format=fmt, temperature=temperature, seed=1)
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_stop_sequences_do_not_cut_constrained_output_but_max_tokens_does(model):
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": BOUNDED[1]}}
    choice = reply(model, response_format=fmt, stop=['"'])
    assert choice["finish_reason"] == "stop" and json.loads(choice["message"]["content"])["unit"]
    cut = reply(model, response_format=fmt, max_tokens=3)
    assert cut["finish_reason"] == "length" and cut["message"]["content"].startswith("{")
    assert reply(model, response_format={"type": "json_object"})["message"]["content"].startswith("{")


BAD_SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "if": {}}}}
BAD_TOOL = [*TOOLS, {"type": "function", "function": {"name": "v", "parameters": {
    "type": "object", "properties": {"x": {"type": "strng"}}}}}]


@pytest.mark.parametrize(("which", "body", "param", "prefix"), [
    ("model", {"response_format": BAD_SCHEMA}, "response_format", "response_format.json_schema.schema: "),
    ("tools_model", {"tools": BAD_TOOL, "tool_choice": "required"}, "tools", "tools[1].function.parameters: "),
    ("tools_model", {"tools": BAD_TOOL, "response_format": BAD_SCHEMA}, "response_format",
     "response_format.json_schema.schema: "),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_constraint_that_does_not_compile_is_refused_before_the_model_is_taken(request, which, body, param, prefix,
                                                                                 stream):
    model = request.getfixturevalue(which)
    with model.engine.model_lock:  # the model is busy: a refusal must not wait for it
        start = time.perf_counter()
        with pytest.raises(RequestError) as caught:
            if stream:
                list(model.predict_stream(None, {"messages": HI, **body}))
            else:
                model.predict(None, {"messages": HI, **body})
        assert time.perf_counter() - start < 5
    assert caught.value.param == param and caught.value.get_http_status_code() == 400
    assert caught.value.message.startswith(prefix + "cannot be enforced: "), caught.value.message
    assert reply(model, max_tokens=2)["finish_reason"] == "length"  # and the model still answers


def test_a_constraint_slower_to_compile_than_the_limit_is_refused(model, monkeypatch):
    monkeypatch.setattr(model.engine.grammars, "compile_seconds", 0.0)
    fresh = {**BOUNDED[2], "description": "not compiled before"}  # a cache miss
    with pytest.raises(RequestError) as caught:
        reply(model, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": fresh}})
    assert caught.value.param == "response_format"
    assert re.fullmatch(r"response_format\.json_schema\.schema: cannot be enforced: takes more than 0 s to compile: "
                        r"simplify it", caught.value.message), caught.value.message


def test_constrained_rows_decode_in_the_batch_with_free_ones_and_get_their_solo_replies(model):
    engine = model.engine
    bodies = [{"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 6} for i in range(3)]
    samplings = ({}, {"temperature": 1.0, "seed": 5}, {}, {"temperature": 0.8, "seed": 2})
    bodies += [{"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
                "max_tokens": 40, **sampling} for schema, sampling in zip(BOUNDED, samplings)]
    alone = [reply(model, **body) for body in bodies]
    results: dict[int, dict] = {}
    with engine.model_lock:  # all of them wait, then decode together
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, reply(model, **bodies[i])))
                   for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        deadline = time.time() + 30
        while engine.batch.waiting < len(bodies) and time.time() < deadline:
            time.sleep(0.01)
        engine.stats["largest_batch"] = 0
    for thread in threads:
        thread.join(timeout=60)
    assert engine.stats["largest_batch"] == len(bodies)
    assert [results[i] for i in range(len(bodies))] == alone
    for body, choice in zip(bodies[3:], alone[3:]):
        jsonschema.validate(json.loads(choice["message"]["content"]),
                            body["response_format"]["json_schema"]["schema"])


# -- tools through a template that takes them ------------------------------------------------------------------------

def test_a_template_that_takes_tools_gets_them_and_the_tool_turns(tools_model):
    engine = tools_model.engine
    assert engine.native_tools and not has_tools_prompt(tools_model)
    call = {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"unit": "c"}'}}
    messages = [*HI, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1",
                                                                   "content": "cold"}]
    request = {"messages": messages, "tools": TOOLS}
    parsed = parse_request(request)
    prompt = engine.tokenizer.decode(engine.encode_chat(parsed.messages, parsed.reply_format))
    # (decoded without the template's special tokens: the tool names, then the turns)
    assert prompt == 'whi<tool_call>{"unit": "c"}</tool_call><tool_response>cold</tool_response>'
    assert tools_model.predict(None, request)[0]["choices"][0]["finish_reason"] in ("stop", "tool_calls", "length")


def has_tools_prompt(model: OnnxChatModel) -> bool:
    """Whether the model also puts a tools system prompt in (it must not when the template takes tools)."""
    return "function calling" in model.engine.tokenizer.decode(model.engine.encode_chat(HI))


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "w"}}])
def test_forced_tool_calls_are_listed_functions_with_valid_arguments_streamed_or_not(tools_model, choice):
    body = {"messages": HI, "tools": TOOLS, "tool_choice": choice}
    whole = tools_model.predict(None, body)[0]["choices"][0]
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] is None
    calls = whole["message"]["tool_calls"]
    assert calls and all(c["function"]["name"] == "w" and c["id"].startswith("call_") for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]), UNIT)
    assert len({c["function"]["arguments"] for c in calls}) == len(calls)  # a repeated call ends the reply
    chunks = list(tools_model.predict_stream(None, body))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    streamed: dict[int, list[str]] = {}
    for delta in deltas[1:-1]:
        (part,) = delta["tool_calls"]
        streamed.setdefault(part["index"], ["", ""])
        streamed[part["index"]][0] += part["function"].get("name", "")
        streamed[part["index"]][1] += part["function"]["arguments"]
    assert [tuple(v) for v in streamed.values()] == [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
