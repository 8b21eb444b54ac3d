"""Structured outputs and tool calls without a model: which ``response_format``/``tools``/``tool_choice`` bodies are
accepted and what they mean, which are refused naming the field, the constraint each becomes, how tool calls are
read back from a reply as it streams, how tools and tool turns reach a template, and that MLflow's schema
enforcement lets all of it through to the model."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.models.utils import _enforce_schema

from chatpack.engine.guidance import MAX_PARALLEL_CALLS, build, closed
from chatpack.engine.tool_calls import CallGuard, ReplyReader
from chatpack.engine.tool_prompt import call_text, conversation
from chatpack.flavours.onnx_chat.log_model import chat_or_prompt_signature
from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError
from chatpack.protocol.reply_format import MAX_CONSTRAINT_CHARS, MAX_TOOLS, demanded_field

M = [{"role": "user", "content": "What's the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": WEATHER, "strict": True}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ROUND_TRIP = [*M, {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "tool_call_id": "call_1", "content": "22 C"}]


def refusal(body: dict) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(body)
    return caught.value


# -- accepted bodies -------------------------------------------------------------------------------------------------

def test_reply_format_fields_parse_to_a_reply_format_that_keeps_them_as_sent():
    fmt = parse_request({"messages": M, "response_format": SCHEMA, "tools": TOOLS,
                         "tool_choice": {"type": "function", "function": {"name": "get_time"}},
                         "parallel_tool_calls": False}).reply_format
    assert (fmt.kind, fmt.schema, fmt.tool_choice, fmt.forced, fmt.parallel) == (
        "json_schema", WEATHER, "function", "get_time", False)
    assert [t.name for t in fmt.tools] == ["get_weather", "get_time"] and fmt.calls_allowed and fmt.constrained
    assert fmt.fields == {"response_format": SCHEMA, "tools": TOOLS, "parallel_tool_calls": False,
                          "tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    assert parse_request({"messages": M}).reply_format is None
    plain = parse_request({"messages": M, "response_format": {"type": "text"}, "tool_choice": "none"}).reply_format
    assert not plain.constrained and build(plain) is None
    assert not parse_request({"messages": M, "tools": TOOLS, "tool_choice": "none"}).reply_format.constrained


def test_a_tool_round_trip_conversation_parses_with_its_tool_fields():
    request = parse_request({"messages": ROUND_TRIP, "tools": TOOLS})
    assert request.messages[1] == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    assert request.messages[2] == {"role": "tool", "content": "22 C", "tool_call_id": "call_1"}
    assert demanded_field(request.reply_format, request.messages) == "tools"
    assert demanded_field(None, request.messages) == "messages" and demanded_field(None, M) is None


def test_a_reply_message_sent_back_as_openai_clients_do_is_accepted_and_its_extras_ignored():
    echoed = {"role": "assistant", "content": None, "refusal": None, "annotations": [], "audio": None,
              "function_call": None, "parsed": {"city": "Paris"},
              "tool_calls": [{**CALL, "function": {**CALL["function"], "parsed_arguments": {"city": "Paris"}}}]}
    request = parse_request({"messages": [*M, echoed, ROUND_TRIP[2]], "tools": TOOLS})
    assert request.messages[1] == {"role": "assistant", "content": None, "tool_calls": [CALL]}


# -- refused bodies --------------------------------------------------------------------------------------------------

def _tool(**function) -> list[dict]:
    return [{"type": "function", "function": function}]


BAD = [
    ("invalid format type", {"response_format": {"type": "xml"}}, "response_format", r"response_format\.type: 'xml'.*"),
    ("format without type", {"response_format": {}}, "response_format", r"response_format\.type: required.*"),
    ("json_schema without name", {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format", r"response_format\.json_schema\.name: required"),
    ("schema not an object", {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 5}}},
     "response_format", r"response_format\.json_schema\.schema: expected a JSON schema object, got 5"),
    ("unknown format key", {"response_format": {"type": "json_object", "schema": {}}}, "response_format",
     r"response_format\.schema: unsupported field \(supported: type\)"),
    ("tool without name", {"tools": _tool(parameters=WEATHER)}, "tools", r"tools\[0\]\.function\.name: required"),
    ("tool name with spaces", {"tools": _tool(name="get weather")}, "tools",
     r"tools\[0\]\.function\.name: 'get weather' is not a valid name.*"),
    ("non-object parameters", {"tools": _tool(name="f", parameters={"type": "string"})}, "tools",
     r"tools\[0\]\.function\.parameters: must be a JSON schema of type 'object'.*got 'string'"),
    ("parameters not a schema", {"tools": _tool(name="f", parameters=[1])}, "tools",
     r"tools\[0\]\.function\.parameters: must be a JSON schema of type 'object'.*"),
    ("tool of another type", {"tools": [{"type": "code_interpreter", "function": {"name": "f"}}]}, "tools",
     r"tools\[0\]\.type: 'code_interpreter' is not 'function'"),
    ("two tools, one name", {"tools": TOOLS + TOOLS[:1]}, "tools",
     r"tools\[2\]\.function\.name: 'get_weather' is already the name of tools\[0\]"),
    ("too many tools", {"tools": [_tool(name=f"f{i}")[0] for i in range(MAX_TOOLS + 1)]}, "tools",
     rf"tools: at most {MAX_TOOLS} tools, got {MAX_TOOLS + 1}"),
    ("tools too large", {"tools": _tool(name="f", description="x" * MAX_CONSTRAINT_CHARS)}, "tools",
     r"tools: the schemas and tools of one request may take at most .*"),
    ("tools not a list", {"tools": {"name": "f"}}, "tools", r"tools: expected a list of .*"),
    ("unknown function chosen", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", r"tool_choice\.function\.name: 'nope' is not one of the tools \(get_weather, get_time\)"),
    ("unknown choice", {"tools": TOOLS, "tool_choice": "always"}, "tool_choice", r"tool_choice: 'always' is not.*"),
    ("required without tools", {"tool_choice": "required"}, "tool_choice", r"tool_choice: 'required' needs tools"),
    ("choice of a wrong type", {"tools": TOOLS, "tool_choice": 3}, "tool_choice", r"tool_choice: expected .*got 3"),
    ("grammar with tools", {"tools": TOOLS, "response_format": {"type": "regex", "regex": "a+"}}, "response_format",
     r"response_format: type 'regex' cannot be combined with tools.*"),
    ("parallel_tool_calls a word", {"parallel_tool_calls": "yes"}, "parallel_tool_calls",
     r"parallel_tool_calls: expected true or false, got 'yes'"),
    ("tool turn answering nothing", {"messages": [*M, {"role": "tool", "tool_call_id": "x", "content": "1"}]},
     "messages", r"messages\[1\]\.tool_call_id: 'x' answers no tool call of an earlier assistant turn"),
    ("tool calls on a user turn", {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
     "messages", r"messages\[0\]\.tool_calls: only assistant turns carry tool calls, not 'user' turns"),
    ("assistant turn with neither", {"messages": [*M, {"role": "assistant"}]}, "messages",
     r"messages\[1\]\.content: required \(a string\)"),
    ("call without id", {"messages": [*M, {"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}]}, "messages",
     r"messages\[1\]\.tool_calls\[0\]\.id: expected a non-empty string, got ''"),
]


@pytest.mark.parametrize(("body", "param", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_reply_format_fields_are_refused_naming_the_field(body, param, message):
    error = refusal({"messages": M, **body})
    assert error.param == param and error.get_http_status_code() == 400
    assert re.fullmatch(message, error.message), error.message
    assert "\n" not in error.message


# -- the constraint each request becomes -----------------------------------------------------------------------------

def test_json_formats_become_json_schema_constraints_in_one_line_style():
    json_object = build(parse_request({"messages": M, "response_format": {"type": "json_object"}}).reply_format)
    assert json_object.kind == "json_schema" and json.loads(json_object.text)["type"] == "object"
    schema = json.loads(build(parse_request({"messages": M, "response_format": SCHEMA}).reply_format).text)
    assert schema["properties"] == WEATHER["properties"] and schema["additionalProperties"] is False
    assert schema["x-guidance"] == {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    regex = build(parse_request({"messages": M, "response_format": {"type": "regex", "regex": "[a-z]+"}}).reply_format)
    assert (regex.kind, regex.text) == ("regex", "[a-z]+")


@pytest.mark.parametrize(("choice", "parallel", "start", "max_calls", "free_text"), [
    ("auto", True, "start: TEXT | calls", MAX_PARALLEL_CALLS, True),
    ("required", True, "start: calls", MAX_PARALLEL_CALLS, False),
    ("required", False, "start: calls", 1, False),
    ({"type": "function", "function": {"name": "get_time"}}, True, "start: calls", 1, False),
])
def test_tools_become_a_lark_grammar_of_reply_or_calls(choice, parallel, start, max_calls, free_text):
    guidance = build(parse_request({"messages": M, "tools": TOOLS, "tool_choice": choice,
                                    "parallel_tool_calls": parallel}).reply_format)
    assert guidance.kind == "lark_grammar" and guidance.text.startswith(start + "\n")
    assert (guidance.max_calls, guidance.free_text) == (max_calls, free_text)
    assert ('"get_weather' in guidance.text) == (not isinstance(choice, dict))  # a named choice offers only it
    assert ("call)*" in guidance.text) == (max_calls > 1)


def test_auto_with_a_json_schema_reply_is_that_json_or_calls():
    guidance = build(parse_request({"messages": M, "tools": TOOLS, "response_format": SCHEMA}).reply_format)
    assert guidance.text.startswith("start: reply | calls\nreply: %json {") and not guidance.free_text


def test_closing_objects_keeps_every_reply_valid_and_leaves_combinators_open():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}},
              "anyOf": [{"properties": {"c": {}}}], "$defs": {"d": {"properties": {"e": {}}}}}
    out = closed(schema)
    assert "additionalProperties" not in out  # anyOf beside properties: left open
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["anyOf"][0]["additionalProperties"] is False and out["$defs"]["d"]["additionalProperties"] is False
    assert closed({"properties": {}, "additionalProperties": True}) == {"properties": {}, "additionalProperties": True}


# -- reading calls back ----------------------------------------------------------------------------------------------

CALLS_TEXT = "\n".join([call_text("get_weather", '{"city": "Pa\\"}ris", "x": [1, {"y": 2}]}'),
                        call_text("get_time", "{}")])


@pytest.mark.parametrize("step", [1, 3, 7, len(CALLS_TEXT)])
def test_streamed_pieces_give_openai_tool_call_deltas_that_join_to_the_message(step):
    reader, deltas = ReplyReader(), []
    for i in range(0, len(CALLS_TEXT), step):
        deltas += reader.feed(CALLS_TEXT[i:i + step])
    deltas += reader.close()
    message = reader.message()
    assert message["content"] is None and reader.complete_calls
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": 'Pa"}ris', "x": [1, {"y": 2}]}
    joined: dict[int, dict] = {}
    for delta in deltas:
        (call,) = delta["tool_calls"]
        entry = joined.setdefault(call["index"], {"id": call.get("id"), "name": "", "arguments": ""})
        entry["name"] += call["function"].get("name", "")
        entry["arguments"] += call["function"]["arguments"]
    assert [(e["id"], e["name"], e["arguments"]) for e in joined.values()] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]


def test_text_replies_stay_text_even_when_they_begin_like_a_call():
    reader = ReplyReader()
    assert reader.feed("<tool") == [] and reader.feed("box is fun") == [{"content": "<toolbox is fun"}]
    assert reader.message() == {"role": "assistant", "content": "<toolbox is fun"} and not reader.complete_calls
    short = ReplyReader()
    assert short.feed("<") == [] and short.close() == [{"content": "<"}]


def test_a_reply_cut_inside_a_call_keeps_the_arguments_so_far_and_drops_a_nameless_call():
    cut = CALLS_TEXT[: CALLS_TEXT.index("get_time") + 4]
    reader = ReplyReader()
    reader.feed(cut)
    assert [c["function"]["name"] for c in reader.message()["tool_calls"]] == ["get_weather"]
    assert not reader.complete_calls
    partial = ReplyReader()
    partial.feed(CALLS_TEXT[:55])
    assert partial.message()["tool_calls"][0]["function"]["arguments"] == '{"city'
    nameless = ReplyReader()
    nameless.feed(CALLS_TEXT[:40])
    assert nameless.message() == {"role": "assistant", "content": ""}


def test_the_guard_ends_a_reply_at_a_repeated_call_and_holds_a_possible_repeat_back():
    first = call_text("get_weather", '{"city": "Paris"}')
    text = f"{first}\n{first}"
    guard, cut = CallGuard(MAX_PARALLEL_CALLS), None
    for end in range(1, len(text) + 1):
        cut, hold = guard.check(text[:end])
        if cut is not None:
            break
        if end > len(first):
            assert hold == end - len(first)  # the separator and the would-be repeat are not emitted yet
    assert cut == len(first) and end == len(text)
    other = first + "\n" + call_text("get_weather", '{"city": "Rome"}')
    guard = CallGuard(MAX_PARALLEL_CALLS)
    holds = [guard.check(other[:end])[1] for end in range(1, len(other) + 1)]
    assert holds[-1] == 0 and holds[other.index("Rome") + 1] == 0  # diverged from every earlier call: emitted
    capped = CallGuard(1)
    assert capped.check(first) == (len(first), 0)


# -- how tools reach the template ------------------------------------------------------------------------------------

def test_templates_without_tools_get_a_system_prompt_and_tool_turns_as_text():
    request = parse_request({"messages": [{"role": "system", "content": "Be brief."}, *ROUND_TRIP], "tools": TOOLS,
                             "tool_choice": "required"})
    turns, tools = conversation(request.messages, request.reply_format, native=False)
    assert tools is None and [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"].startswith("Be brief.\n\nYou are a function calling AI model.")
    assert '"name": "get_weather"' in turns[0]["content"]
    assert turns[0]["content"].endswith("You must call at least one function.")
    assert turns[2]["content"] == call_text("get_weather", '{"city": "Paris"}')
    assert turns[3]["content"] == '<tool_response>\n{"name": "get_weather", "content": "22 C"}\n</tool_response>'
    none = parse_request({"messages": ROUND_TRIP, "tools": TOOLS, "tool_choice": "none"})
    assert conversation(none.messages, none.reply_format, native=False)[0][0]["role"] == "user"  # no tool prompt


def test_templates_with_tools_get_them_and_the_turns_in_hugging_face_form():
    request = parse_request({"messages": ROUND_TRIP, "tools": TOOLS})
    turns, tools = conversation(request.messages, request.reply_format, native=True)
    assert [t["function"]["name"] for t in tools] == ["get_weather", "get_time"]
    assert turns[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert turns[2] == {"role": "tool", "content": "22 C", "tool_call_id": "call_1", "name": "get_weather"}


# -- through MLflow's schema enforcement -----------------------------------------------------------------------------

def test_mlflow_schema_enforcement_passes_every_structured_field_unchanged():
    nested = {"type": "object", "properties": {"where": {"type": "object", "properties": {
        "city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "integer"}}}}}}
    body = {"messages": ROUND_TRIP, "tools": _tool(name="f", parameters=nested), "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "response_format": SCHEMA}
    (row,) = _enforce_schema(body, chat_or_prompt_signature().inputs).to_dict(orient="records")
    assert parse_request(row) == parse_request(body)
