"""The Messages API's translation into a chat request, its error renames, its reply and stream-event building and the
tokenize bodies, without a model (the routes under the SDK: tests/test_messages_api.py)."""

from __future__ import annotations

import json

import pytest

from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError
from chatpack.serving.messages.errors import anthropic_error_body, is_messages_path
from chatpack.serving.messages.protocol import renamed, translate
from chatpack.serving.messages.serving import MessageEvents, MessageShell, StopScanner, message_object, stop_reason
from chatpack.serving.tokens.protocol import parse_detokenize, parse_tokenize

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
BASE = {"model": "m", "max_tokens": 8}


def refused(body: dict, counting: bool = False) -> str:
    with pytest.raises(RequestError) as err:
        translate(body, counting)
    return err.value.message


def test_system_blocks_tool_turns_and_options_become_the_chat_request():
    asked = translate({
        **BASE, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                           {"type": "text", "text": "Use tools."}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop_sequences": ["END", "END"],
        "metadata": {"user_id": "u1"}, "stream": True, "service_tier": "standard_only",
        "thinking": {"type": "disabled"}, "cache_control": {"type": "ephemeral", "ttl": "1h"}})
    chat = asked.chat
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "And tomorrow?"}]
    assert asked.sources == ("system", "messages[0]", "messages[1]", "messages[2].content[0]", "messages[2]")
    assert chat["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                                               "description": "Weather"}}]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert (chat["temperature"], chat["top_p"], chat["top_k"], chat["max_tokens"]) == (0.5, 0.9, 40, 8)
    assert asked.stop_sequences == ("END",) and asked.stream and "stop" not in chat
    parsed = parse_request(chat)  # the chat path accepts what the translation makes
    assert parsed.reply_format.tool_choice == "required" and not parsed.reply_format.parallel


def test_tool_choices_errors_and_a_merged_run_of_turns():
    one = {**BASE, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "text", "text": "b"}, {"type": "text", "text": "c"}]}]}
    assert translate(one).chat["messages"] == [{"role": "user", "content": "a\nb\nc"}]
    tools = [{"name": "f", "input_schema": {"type": "object"}, "type": "custom", "strict": True}]
    for choice, chat_choice in (({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
                                ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}})):
        assert translate({**one, "tools": tools, "tool_choice": choice}).chat["tool_choice"] == chat_choice
    failed = {**BASE, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "no such city"}]}]}]}
    assert translate(failed).chat["messages"][1] == {"role": "tool", "tool_call_id": "t1",
                                                     "content": "Error: no such city"}


@pytest.mark.parametrize("body, says", [
    ({"messages": [{"role": "user", "content": "hi"}], "model": "m"}, "max_tokens: required"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "no prompt cache here"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, "model: required"),
    ({**BASE, "messages": []}, "messages: expected a non-empty list"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled", "budget_tokens": 2048}},
     "thinking: only {\"type\": \"disabled\"} is accepted (the served models do not think"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "mcp_servers": [{}]}, "mcp_servers: not supported"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "container": "c1"}, "container: not supported"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "service_tier": "priority"}, "service_tier: only"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "speed": "fast"}, "speed: only \"standard\""),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n: unsupported field"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}, "temperature: must be between 0"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages[0].content[0].type: 'image' blocks are not supported: the served models read text only"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "'document' blocks are not supported"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hm", "signature": "s"}]}, {"role": "user", "content": "go on"}]},
     "messages[1].content[0].type: 'thinking' blocks are not supported"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]},
     "messages[1]: the conversation ends with an assistant turn (prefill"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope"}]}]},
     "messages[0].content[0].tool_use_id: 'nope' answers no tool_use block"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search_20250305",
                                                                          "name": "web_search"}]},
     "tools[0].type: 'web_search_20250305' is not supported: only client tools"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "tools": [
        {"name": "f", "input_schema": WEATHER, "input_examples": [{"city": "Paris"}]}]}, "tools[0].input_examples"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "required"}},
     "tool_choice.type: 'required' is not supported (one of auto, any, tool, none)"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "output_config": {"effort": "high"}},
     "output_config.effort: not supported"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "citations": [{}]}]}]},
     "messages[0].content[0].citations: not supported"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "cache_control": {"type": "persistent"}},
     "cache_control.type: 'persistent' is not 'ephemeral'"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "metadata": {"tenant": "x"}},
     "metadata.tenant: unsupported field"),
    ({**BASE, "messages": [{"role": "user", "content": "hi"}], "metadata": {"user_id": "u" * 300}},
     "metadata.user_id: expected a string of at most 256 characters, got 300 characters"),
])
def test_unsupported_fields_and_values_are_refused_by_name(body, says):
    assert says in refused(body)


def test_count_tokens_takes_the_prompt_fields_only():
    asked = translate({"model": "m", "messages": [{"role": "user", "content": "hi"}], "system": "s"}, counting=True)
    assert asked.chat["messages"][0] == {"role": "system", "content": "s"} and "max_tokens" not in asked.chat
    assert "count_tokens counts the prompt only" in refused({"model": "m", "messages": [
        {"role": "user", "content": "hi"}], "max_tokens": 5}, counting=True)


def test_chat_errors_are_renamed_to_the_messages_fields():
    sources = ("system", "messages[0]", "messages[1]", "messages[2].content[0]")
    assert renamed("messages", "messages[3].tool_call_id: 'x' answers no tool call", sources) == (
        "messages", "messages[2].content[0].tool_use_id: 'x' answers no tool call")
    assert renamed("tools", "tools[1].function.parameters: must be a JSON schema", sources)[1] == \
        "tools[1].input_schema: must be a JSON schema"
    assert renamed("tools", "tools[0].function.name: 'a b' is not a valid name", sources)[1] == \
        "tools[0].name: 'a b' is not a valid name"
    assert renamed("tool_choice", "tool_choice.function.name: 'g' is not one of the tools", sources)[1] == \
        "tool_choice.name: 'g' is not one of the tools"
    assert renamed("response_format", "response_format.json_schema.schema: bad", sources) == (
        "output_config", "output_config.format.schema: bad")
    assert renamed("messages", "messages: the prompt is 9000 tokens", sources)[1] == "messages: the prompt is 9000 " \
                                                                                     "tokens"
    asked = translate({**BASE, "messages": [{"role": "user", "content": "hi"}],
                       "tools": [{"name": "bad name", "input_schema": WEATHER}]})
    with pytest.raises(RequestError) as err:
        parse_request(asked.chat)
    assert renamed(err.value.param, err.value.message, asked.sources)[1].startswith("tools[0].name: 'bad name'")


def test_error_bodies_take_anthropics_shape_and_types():
    assert anthropic_error_body(400, "m") == {"type": "error", "error": {"type": "invalid_request_error",
                                                                         "message": "m"}}
    kinds = {s: anthropic_error_body(s, "m")["error"]["type"] for s in (401, 404, 429, 500, 503, 529, 418)}
    assert kinds == {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 500: "api_error",
                     503: "overloaded_error", 529: "overloaded_error", 418: "api_error"}
    assert is_messages_path("/v1/messages") and is_messages_path("/v1/messages/count_tokens")
    assert not is_messages_path("/v1/messagesx") and not is_messages_path("/v1/chat/completions")


def chunk(content: str | None = None, calls: list | None = None, finish: str | None = None,
          usage: dict | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    if calls:
        delta["tool_calls"] = calls
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return body | ({"usage": usage} if usage else {})


def test_stream_events_follow_the_api_sequence_for_text_and_tool_use():
    events = MessageEvents(MessageShell("m"), max_tokens=50, input_tokens=12)
    out = events.start()
    out += events.chunk(chunk("Hel")) + events.chunk(chunk("lo"))
    out += events.chunk(chunk(calls=[{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "f", "arguments": ""}}]))
    out += events.chunk(chunk(calls=[{"index": 0, "function": {"arguments": '{"city": "Pa'}}]))
    out += events.chunk(chunk(calls=[{"index": 0, "function": {"arguments": 'ris"}'}}]))
    out += events.chunk(chunk(finish="tool_calls", usage={"prompt_tokens": 12, "completion_tokens": 9}))
    out += events.finish()
    assert [e["type"] for e in out] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    assert out[0]["message"]["usage"]["input_tokens"] == 12 and out[0]["message"]["stop_reason"] is None
    assert out[6]["content_block"]["type"] == "tool_use" and out[6]["content_block"]["id"].startswith("toolu_")
    assert out[7]["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Pa'}
    assert out[10]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert out[10]["usage"]["output_tokens"] == 9
    message = events.message()
    assert [b["type"] for b in message["content"]] == ["text", "tool_use"]
    assert message["content"][0]["text"] == "Hello" and message["content"][1]["input"] == {"city": "Paris"}


def test_a_stop_sequence_ends_the_stream_held_back_and_named():
    events = MessageEvents(MessageShell("m"), stops=("STOP", "ST"), max_tokens=50, input_tokens=3,
                           count=lambda text: len(text.split()))
    out = []
    for piece in ("one two S", "T", "OP three"):
        out += events.chunk(chunk(piece))
        if events.stopped:
            break
    out += events.finish()
    text = "".join(e["delta"]["text"] for e in out if e["type"] == "content_block_delta")
    assert text == "one two " and events.scanner.hit == "ST"  # the earliest in the text; of those, the first given
    assert out[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "ST"}
    assert out[-2]["usage"]["output_tokens"] == 3  # counted from the text generated: "one two ST"
    scanner = StopScanner(("</a>",))
    assert scanner.feed("x </") == "x " and scanner.feed("b") == "</b" and scanner.flush() == ""


def test_whole_replies_become_message_objects_with_their_stop_reason():
    reply = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": [1, 2'}}]},
        "finish_reason": "length"}], "usage": {"prompt_tokens": 5, "completion_tokens": 8}}
    message = message_object(MessageShell("m"), reply, max_tokens=8)
    assert message["stop_reason"] == "max_tokens" and message["content"][0]["input"] == {"a": [1, 2]}
    assert message["usage"] | {"input_tokens": 5, "output_tokens": 8} == message["usage"]
    assert stop_reason("length", 3, 8) == "model_context_window_exceeded"
    assert stop_reason("stop", 3, 8) == "end_turn" and stop_reason("stop", 3, 8, "X") == "stop_sequence"
    empty = message_object(MessageShell("m"), {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]},
                           None)
    assert empty["content"] == [{"type": "text", "text": ""}]
    assert json.dumps(empty)


def test_tokenize_bodies_in_both_shapes():
    vllm = parse_tokenize({"model": "m", "prompt": "hi", "return_token_strs": True})
    assert (vllm.text, vllm.add_special, vllm.token_strs) == ("hi", True, True)
    llama = parse_tokenize({"content": "hi", "with_pieces": True})
    assert (llama.text, llama.add_special, llama.pieces) == ("hi", False, True)
    assert parse_tokenize({"content": "hi", "add_special_tokens": True}).add_special
    chat = parse_tokenize({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True,
                           "chat_template_kwargs": {}})
    assert chat.chat.messages == [{"role": "user", "content": "hi"}]
    for body, says in (({"prompt": "a", "content": "b"}, "not prompt and content"),
                       ({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": False},
                        "add_generation_prompt: only true"),
                       ({"messages": [{"role": "user", "content": "hi"}], "chat_template": "{{x}}"},
                        "chat_template: not supported"),
                       ({"content": "a", "parse_special": False}, "parse_special: only true"),
                       ({"content": "a", "n_probs": 3}, "n_probs: unsupported field"),
                       ({}, "prompt/content/messages: required")):
        with pytest.raises(RequestError) as err:
            parse_tokenize(body)
        assert says in err.value.message
    assert parse_detokenize({"tokens": [1, 2]}, 10) == [1, 2]
    for tokens, says in (([1, True], "tokens[1]"), ([-1], "tokens[0]"), ([10], "its vocabulary has 10 ids")):
        with pytest.raises(RequestError) as err:
            parse_detokenize({"tokens": tokens}, 10)
        assert says in err.value.message
