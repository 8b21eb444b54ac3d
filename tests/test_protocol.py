"""The request protocol, as a spec: which bodies are accepted and what they mean, which are refused and with which
``param`` and message, how values from MLflow's schema enforcement are read, and how errors map to HTTP and OpenAI."""

from __future__ import annotations

import importlib.util
import math
import pickle
import re
import shutil
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models.utils import _enforce_schema
from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA

from chatpack.flavours.onnx_chat.log_model import (
    OWN_COLUMNS,
    REFUSED_CHAT_COLUMNS,
    UNDECLARED_FIELDS,
    chat_or_prompt_signature,
    mlflow_type,
)
from chatpack.protocol.chat_request import ChatRequest, GenerationOptions, parse_request
from chatpack.protocol.errors import RequestError, error_body, openai_error
from chatpack.protocol.request_model import REQUEST_MODELS, ChatBody, PromptBody
from chatpack.serving.served_model import own_imports
from tests.conftest import ROOT

M = [{"role": "user", "content": "hi"}]
CHAT_FIELDS = ("frequency_penalty, logit_bias, logprobs, max_completion_tokens, max_tokens, messages, metadata, model, "
               "n, parallel_tool_calls, presence_penalty, response_format, seed, service_tier, stop, store, stream, "
               "stream_options, temperature, tool_choice, tools, top_k, top_logprobs, top_p, user")
TOKENS = "<= 2147483647"
PROMPT_FIELDS = ("logprobs, max_tokens, model, n, prompt, seed, stop, stream, temperature, text_completion, top_k, "
                 "top_logprobs, top_p")
ROLES = "system, user, assistant, developer, tool"
STOP = "stop: expected a non-empty string or a list of at most 4 non-empty strings"


def refusal(body: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(body)
    return caught.value


# -- accepted bodies -------------------------------------------------------------------------------------------------

GOOD = [
    ("minimal chat", {"messages": M}, M, None, GenerationOptions(), False),
    ("developer is system", {"messages": [{"role": "developer", "content": "be brief"}, *M]},
     [{"role": "system", "content": "be brief"}, *M], None, GenerationOptions(), False),
    ("every role", {"messages": [{"role": r, "content": r} for r in ("system", "user", "assistant")]},
     [{"role": r, "content": r} for r in ("system", "user", "assistant")], None, GenerationOptions(), False),
    ("name accepted, not passed on", {"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, M, None,
     GenerationOptions(), False),
    ("empty content", {"messages": [{"role": "user", "content": ""}]}, [{"role": "user", "content": ""}], None,
     GenerationOptions(), False),
    ("every chat option", {"messages": M, "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                           "stop": ["a", "b"], "n": 2, "seed": 3, "stream": True, "model": "x", "user": "u",
                           "stream_options": {"include_usage": True}},
     M, None, GenerationOptions(5, 0.7, 0.9, 40, ("a", "b"), 2, 3), True),
    ("stop as one string", {"messages": M, "stop": "\n"}, M, None, GenerationOptions(stop=("\n",)), False),
    ("empty stop list", {"messages": M, "stop": []}, M, None, GenerationOptions(), False),
    ("max_completion_tokens is max_tokens", {"messages": M, "max_completion_tokens": 7}, M, None,
     GenerationOptions(max_tokens=7), False),
    ("max_tokens wins over max_completion_tokens", {"messages": M, "max_tokens": 3, "max_completion_tokens": 7}, M,
     None, GenerationOptions(max_tokens=3), False),
    ("inclusive bounds", {"messages": M, "max_tokens": 1, "temperature": 2, "top_p": 1, "top_k": 1, "n": 8,
                          "seed": 0, "stop": ["a", "b", "c", "d"]},
     M, None, GenerationOptions(1, 2.0, 1.0, 1, ("a", "b", "c", "d"), 8, 0), False),
    ("lower bounds", {"messages": M, "temperature": 0, "n": 1}, M, None, GenerationOptions(temperature=0.0), False),
    ("include_obfuscation accepted", {"messages": M, "stream_options": {"include_obfuscation": False}}, M,
     None, GenerationOptions(), False),
    ("neutral values of unimplemented fields (what clients send by default)",
     {"messages": M, "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "store": False,
      "metadata": {"session": "abc"}, "service_tier": "auto", "logprobs": False, "top_logprobs": 0}, M, None,
     GenerationOptions(), False),
    ("service_tier default", {"messages": M, "service_tier": "default", "metadata": {}}, M, None, GenerationOptions(),
     False),
    ("top_logprobs 0 without logprobs", {"messages": M, "top_logprobs": 0}, M, None, GenerationOptions(), False),
    ("largest integers", {"messages": M, "max_tokens": 2**31 - 1, "top_k": 2**31 - 1, "seed": 2**63 - 1}, M, None,
     GenerationOptions(max_tokens=2**31 - 1, top_k=2**31 - 1, seed=2**63 - 1), False),
    ("raw prompt", {"prompt": "<|user|>hi"}, None, "<|user|>hi", GenerationOptions(), False),
    ("raw prompt with every option it takes",
     {"prompt": "p", "max_tokens": 4, "temperature": 1, "top_p": 0.5, "top_k": 2, "stop": "x", "n": 3, "seed": 9,
      "stream": True, "model": "m"},
     None, "p", GenerationOptions(4, 1.0, 0.5, 2, ("x",), 3, 9), True),
]


@pytest.mark.parametrize(("body", "messages", "prompt", "options", "stream"), [g[1:] for g in GOOD],
                         ids=[g[0] for g in GOOD])
def test_accepted_bodies_parse_to_messages_prompt_options_and_stream(body, messages, prompt, options, stream):
    include_usage = body.get("stream_options") == {"include_usage": True}  # only "every chat option" asks
    assert parse_request(body) == ChatRequest(messages, prompt, options, stream, include_usage=include_usage)


def test_numbers_keep_their_python_types():
    options = parse_request({"messages": M, "temperature": 1, "top_p": 1, "max_tokens": 5}).options
    assert type(options.temperature) is float and type(options.top_p) is float and type(options.max_tokens) is int


# -- refused bodies: param and message -------------------------------------------------------------------------------

BAD = [
    ("not an object", [M], None, r"request: expected a JSON object, got list"),
    ("neither form", {"temperature": 0.5}, "messages",
     r"messages: required \(a non-empty list of \{role, content\} objects\)"),
    ("both forms", {"messages": M, "prompt": "x"}, "prompt",
     r"prompt: give either 'messages' \(chat\) or 'prompt' \(raw prompt\), not both"),
    ("empty messages", {"messages": []}, "messages", r"messages: must not be empty"),
    ("messages not a list", {"messages": "hello"}, "messages",
     r"messages: expected a non-empty list of \{role, content\} objects, got 'hello'"),
    ("message not an object", {"messages": ["hi"]}, "messages",
     r"messages\[0\]: expected an object with 'role' and 'content', got 'hi'"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages",
     rf"messages\[0\]\.role: 'wizard' is not one of {ROLES}"),
    ("tool turn without tool_call_id", {"messages": [*M, {"role": "tool", "content": "x"}]}, "messages",
     r"messages\[1\]\.tool_call_id: required in a 'tool' turn \(the id of the call it answers\)"),
    ("missing role", {"messages": [{"content": "x"}]}, "messages",
     rf"messages\[0\]\.role: required \(one of {ROLES}\)"),
    ("content not a string", {"messages": [{"role": "user", "content": 5}]}, "messages",
     r"messages\[0\]\.content: expected a string, got 5"),
    ("an image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages", r"messages\[0\]\.content\[0\]: 'image_url' parts are not supported \(text only\)"),
    ("a part that is not text", {"messages": [{"role": "user", "content": [{"type": "text", "txt": "x"}]}]},
     "messages", r'messages\[0\]\.content\[0\]: expected \{"type": "text", "text": "..."\}'),
    ("no parts", {"messages": [{"role": "user", "content": []}]}, "messages",
     r"messages\[0\]\.content: expected a string or a non-empty list of text parts, got an empty list"),
    ("missing content in a later turn", {"messages": [*M, {"role": "assistant"}]}, "messages",
     r"messages\[1\]\.content: required \(a string\)"),
    ("unknown message field", {"messages": [{"role": "user", "content": "x", "mood": "calm"}]}, "messages",
     r"messages\[0\]\.mood: unsupported field \(supported: annotations, content, name, parsed, refusal, role, "
     r"tool_call_id, tool_calls\)"),
    ("max_tokens 0", {"messages": M, "max_tokens": 0}, "max_tokens", r"max_tokens: must be >= 1, got 0"),
    ("max_tokens negative", {"messages": M, "max_tokens": -3}, "max_tokens", r"max_tokens: must be >= 1, got -3"),
    ("max_tokens a word", {"messages": M, "max_tokens": "ten"}, "max_tokens",
     r"max_tokens: expected an integer >= 1, got 'ten'"),
    ("max_tokens a fraction", {"messages": M, "max_tokens": 5.5}, "max_tokens",
     r"max_tokens: expected an integer >= 1, got 5\.5"),
    ("max_tokens a bool", {"messages": M, "max_tokens": True}, "max_tokens",
     r"max_tokens: expected an integer >= 1, got True"),
    ("max_completion_tokens 0", {"messages": M, "max_completion_tokens": 0}, "max_completion_tokens",
     r"max_completion_tokens: must be >= 1, got 0"),
    ("temperature above 2", {"messages": M, "temperature": 3}, "temperature",
     r"temperature: must be between 0 and 2, got 3"),
    ("temperature negative", {"messages": M, "temperature": -0.5}, "temperature",
     r"temperature: must be between 0 and 2, got -0\.5"),
    ("temperature infinite", {"messages": M, "temperature": math.inf}, "temperature",
     r"temperature: must be between 0 and 2, got inf"),
    ("temperature a word", {"messages": M, "temperature": "hot"}, "temperature",
     r"temperature: expected a number between 0 and 2, got 'hot'"),
    ("temperature a bool", {"messages": M, "temperature": True}, "temperature",
     r"temperature: expected a number between 0 and 2, got True"),
    ("top_p 0", {"messages": M, "top_p": 0}, "top_p", r"top_p: must be in \(0, 1\], got 0"),
    ("top_p above 1", {"messages": M, "top_p": 1.5}, "top_p", r"top_p: must be in \(0, 1\], got 1\.5"),
    ("top_k 0", {"messages": M, "top_k": 0}, "top_k", r"top_k: must be >= 1, got 0"),
    ("top_k a string", {"messages": M, "top_k": "5"}, "top_k", r"top_k: expected an integer >= 1, got '5'"),
    ("n 0", {"messages": M, "n": 0}, "n", r"n: must be between 1 and 8, got 0"),
    ("n 9", {"messages": M, "n": 9}, "n", r"n: must be between 1 and 8, got 9"),
    ("seed negative", {"messages": M, "seed": -1}, "seed", r"seed: must be >= 0, got -1"),
    ("stop empty string", {"messages": M, "stop": ""}, "stop", rf"{STOP}, got ''"),
    ("stop with an empty entry", {"messages": M, "stop": ["a", ""]}, "stop", rf"{STOP}, got ''"),
    ("stop a number", {"messages": M, "stop": 5}, "stop", rf"{STOP}, got 5"),
    ("stop with a number", {"messages": M, "stop": ["a", 5]}, "stop", rf"{STOP}, got 5"),
    ("five stops", {"messages": M, "stop": list("abcde")}, "stop", r"stop: at most 4 sequences, got 5"),
    ("stream a word", {"messages": M, "stream": "yes"}, "stream", r"stream: expected true or false, got 'yes'"),
    ("stream 1", {"messages": M, "stream": 1}, "stream", r"stream: expected true or false, got 1"),
    ("stream_options not an object", {"messages": M, "stream_options": 5}, "stream_options",
     r"stream_options: expected an object such as \{\"include_usage\": true\}, got 5"),
    ("include_usage a word", {"messages": M, "stream_options": {"include_usage": "yes"}}, "stream_options",
     r"stream_options\.include_usage: expected true or false, got 'yes'"),
    ("stream_options with a key of another server", {"messages": M, "stream_options": {"continuous_usage_stats": 1}},
     "stream_options", r"stream_options\.continuous_usage_stats: unsupported field \(supported: include_obfuscation, "
     r"include_usage\)"),
    ("model not a string", {"messages": M, "model": 5}, "model", r"model: expected a string, got 5"),
    ("user not a string", {"messages": M, "user": ["u"]}, "user", r"user: expected a string, got a list"),
    ("unknown field", {"messages": M, "foo": 1}, "foo", rf"foo: unsupported field \(supported: {CHAT_FIELDS}\)"),
    ("OpenAI's presence_penalty", {"messages": M, "presence_penalty": 0.5}, "presence_penalty",
     r"presence_penalty: only 0 is accepted \(penalties are not implemented here\), got 0\.5"),
    ("frequency_penalty not 0", {"messages": M, "frequency_penalty": -1}, "frequency_penalty",
     r"frequency_penalty: only 0 is accepted \(penalties are not implemented here\), got -1\.0"),
    ("logit_bias not empty", {"messages": M, "logit_bias": {"50": 5}}, "logit_bias",
     r"logit_bias: only \{\} is accepted \(logit biases are not implemented here\), got a dict"),
    ("logit_bias not an object", {"messages": M, "logit_bias": [1]}, "logit_bias",
     r"logit_bias: expected an object, got a list"),
    ("store true", {"messages": M, "store": True}, "store",
     r"store: only false is accepted \(replies are not stored here\), got True"),
    ("metadata with a number", {"messages": M, "metadata": {"a": 1}}, "metadata",
     r"metadata: expected an object of string values, got 1"),
    ("service_tier flex", {"messages": M, "service_tier": "flex"}, "service_tier",
     r"service_tier: only 'auto' or 'default' is accepted \(there is one tier\), got 'flex'"),
    ("max_tokens past int32", {"messages": M, "max_tokens": 10**23}, "max_tokens",
     rf"max_tokens: must be {TOKENS}, got 100000000000000000000000"),
    ("max_completion_tokens past int32", {"messages": M, "max_completion_tokens": 2**31}, "max_completion_tokens",
     rf"max_completion_tokens: must be {TOKENS}, got 2147483648"),
    ("top_k past int32", {"messages": M, "top_k": 2**40}, "top_k", rf"top_k: must be {TOKENS}, got 1099511627776"),
    ("seed past int64", {"messages": M, "seed": 1e30}, "seed",
     r"seed: must be <= 9223372036854775807, got 1000000000000000019884624838656"),
    ("seed past int64 (prompt form)", {"prompt": "p", "seed": 2**63}, "seed",
     r"seed: must be <= 9223372036854775807, got 9223372036854775808"),
    ("logprobs not a boolean", {"messages": M, "logprobs": 1}, "logprobs", r"logprobs: expected true or false, got 1"),
    ("top_logprobs over 20", {"messages": M, "logprobs": True, "top_logprobs": 21}, "top_logprobs",
     r"top_logprobs: must be between 0 and 20, got 21"),
    ("top_logprobs negative", {"messages": M, "logprobs": True, "top_logprobs": -1}, "top_logprobs",
     r"top_logprobs: must be between 0 and 20, got -1"),
    ("top_logprobs without logprobs", {"messages": M, "top_logprobs": 2}, "top_logprobs",
     r"top_logprobs: requires logprobs: true"),
    ("top_logprobs with logprobs false", {"messages": M, "logprobs": False, "top_logprobs": 2}, "top_logprobs",
     r"top_logprobs: requires logprobs: true"),
    ("text_completion is prompt-only", {"messages": M, "text_completion": True}, "text_completion",
     r"text_completion: unsupported field.*"),
    ("response_format is chat-only", {"prompt": "p", "response_format": {"type": "json_object"}}, "response_format",
     r"response_format: unsupported field.*"),
    ("empty prompt", {"prompt": ""}, "prompt", r"prompt: expected a non-empty string, got ''"),
    ("prompt not a string", {"prompt": ["a"]}, "prompt", r"prompt: expected a non-empty string, got a list"),
    ("user is chat-only", {"prompt": "p", "user": "u"}, "user",
     rf"user: unsupported field \(supported: {PROMPT_FIELDS}\)"),
    ("max_completion_tokens is chat-only", {"prompt": "p", "max_completion_tokens": 3}, "max_completion_tokens",
     r"max_completion_tokens: unsupported field.*"),
    ("stream_options is chat-only", {"prompt": "p", "stream_options": {}}, "stream_options",
     r"stream_options: unsupported field.*"),
    ("prompt form bounds", {"prompt": "p", "temperature": 9}, "temperature", r"temperature: must be between 0 and 2.*"),
    # which error comes first: unsupported fields (by name), then the conversation, then the options
    ("two unknown fields: the first by name", {"messages": M, "zed": 1, "alpha": 2}, "alpha", r"alpha: unsupported.*"),
    ("an unknown field before a bad value", {"messages": M, "temperature": 9, "zed": 1}, "zed", r"zed: unsupported.*"),
    ("the conversation before the options", {"messages": [], "temperature": 9}, "messages", r"messages: must not.*"),
]


@pytest.mark.parametrize(("body", "param", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_refused_bodies_name_the_field_in_param_and_message(body, param, message):
    error = refusal(body)
    assert error.param == param
    assert error.message == str(error)
    assert re.fullmatch(message, error.message), error.message


@pytest.mark.parametrize("body", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_refusals_are_one_line_of_our_own_words(body):
    message = refusal(body).message
    assert "\n" not in message
    assert "pydantic" not in message.lower() and "validation error" not in message.lower()
    assert "input_value" not in message and "type=" not in message


# -- what MLflow's schema enforcement hands the model ----------------------------------------------------------------

UNSET = [None, math.nan, float("nan"), np.nan, pd.NA]


@pytest.mark.parametrize("unset", UNSET, ids=repr)
def test_none_nan_and_pandas_na_count_as_unset(unset):
    options = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "n", "seed", "stream",
               "stream_options", "model", "user")
    body = {"messages": M, "prompt": unset, **{name: unset for name in options}}
    assert parse_request(body) == ChatRequest(M, None, GenerationOptions(), False)
    assert parse_request({"messages": unset, "prompt": "p", "user": unset}).prompt == "p"
    message = {"role": "user", "content": "hi", "name": unset, "tool_calls": unset, "refusal": unset}
    assert parse_request({"messages": [message]}).messages == M
    assert refusal({"messages": [{"role": unset, "content": "x"}]}).message.startswith("messages[0].role: required")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "top_k", "n", "seed"])
def test_integral_floats_are_integers(field):
    request = parse_request({"messages": M, field: 5.0})
    value = {"max_completion_tokens": request.options.max_tokens}.get(field, getattr(request.options, field, None))
    assert value == 5 and type(value) is int
    assert refusal({"messages": M, field: 5.5}).param == field


def test_numpy_arrays_and_scalars_are_plain_values():
    body = {"messages": np.array(M, dtype=object), "stop": np.array(["a", "b"]), "max_tokens": np.int64(4),
            "temperature": np.float64(0.5), "stream": np.bool_(True), "seed": np.float64(2.0)}
    assert parse_request(body) == ChatRequest(M, None, GenerationOptions(4, 0.5, None, None, ("a", "b"), 1, 2), True)
    assert refusal({"messages": M, "stop": np.array(["a", ""])}).param == "stop"


def test_rows_through_mlflow_schema_enforcement_parse_like_the_json_they_came_from():
    schema = chat_or_prompt_signature().inputs
    rows = [{"messages": M, "max_tokens": 5, "stop": ["x"], "seed": 1},
            {"messages": [{"role": "developer", "content": "be brief"}, *M], "max_tokens": 6, "stop": ["y"],
             "seed": 2, "temperature": 0.5}]
    enforced = _enforce_schema(pd.DataFrame(rows), schema).to_dict(orient="records")
    assert [parse_request(r) for r in enforced] == [parse_request(r) for r in rows]
    single = {"messages": M, "max_completion_tokens": 3, "model": "m", "user": "u", "n": 2}
    assert [parse_request(r) for r in _enforce_schema(single, schema).to_dict(orient="records")] == [
        parse_request(single)]
    prompt = {"prompt": "p", "top_k": 4}
    assert parse_request(_enforce_schema(prompt, schema).to_dict(orient="records")[0]) == parse_request(prompt)


# -- the MLflow signature agrees with the request model --------------------------------------------------------------

def test_signature_declares_every_request_field_and_the_refused_chat_fields():
    declared = {c.name for c in chat_or_prompt_signature().inputs.inputs}
    fields = set(ChatBody.model_fields) | set(PromptBody.model_fields)
    assert declared == (fields - set(UNDECLARED_FIELDS)) | set(REFUSED_CHAT_COLUMNS)
    assert not any(c.required for c in chat_or_prompt_signature().inputs.inputs)  # both forms, any option


def test_signature_types_are_the_request_model_types():
    chat = {c.name: c.type for c in CHAT_MODEL_INPUT_SCHEMA.inputs}
    columns = {c.name: c.type for c in chat_or_prompt_signature().inputs.inputs}
    fields = {**ChatBody.model_fields, **PromptBody.model_fields}
    for name, field in fields.items():
        if name in UNDECLARED_FIELDS or name == "messages":  # messages: MLflow's message type, a superset of ours
            continue
        assert columns[name] == mlflow_type(field.annotation), name
        if name in chat and name not in OWN_COLUMNS:
            assert chat[name] == columns[name], name
    assert columns["messages"] == chat["messages"]


@pytest.mark.parametrize("column", REFUSED_CHAT_COLUMNS)
def test_declared_chat_columns_the_model_does_not_implement_are_refused_by_name(column):
    error = refusal({"messages": M, column: 0.5})
    assert error.param == column and error.message.startswith(f"{column}: unsupported field")


def test_the_largest_accepted_integers_pass_mlflow_schema_enforcement():
    body = {"messages": M, "max_tokens": 2**31 - 1, "max_completion_tokens": 2**31 - 1, "top_k": 2**31 - 1,
            "seed": 2**63 - 1, "n": 8, "logprobs": True, "top_logprobs": 20}
    enforced = _enforce_schema(body, chat_or_prompt_signature().inputs).to_dict(orient="records")
    assert parse_request(enforced[0]) == parse_request(body)


def test_neutral_chat_fields_pass_mlflow_schema_enforcement_and_non_neutral_ones_reach_the_model():
    schema = chat_or_prompt_signature().inputs
    neutral = {"messages": M, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "store": False,
               "metadata": {"a": "b"}, "service_tier": "default", "logprobs": False, "top_logprobs": 0}
    enforced = _enforce_schema(neutral, schema).to_dict(orient="records")[0]
    assert parse_request(enforced) == parse_request({"messages": M})
    for field, value in (("logit_bias", {"7": 1}), ("store", True), ("service_tier", "priority")):
        enforced = _enforce_schema({"messages": M, field: value}, schema).to_dict(orient="records")[0]
        assert refusal(enforced).param == field  # declared: refused by name, not dropped by MLflow


# -- errors: HTTP 400 with param as data -----------------------------------------------------------------------------

def test_request_errors_are_mlflow_invalid_parameter_value_carrying_param():
    error = refusal({"messages": M, "temperature": 3})
    assert isinstance(error, MlflowException) and isinstance(error, ValueError)
    assert error.error_code == "INVALID_PARAMETER_VALUE" and error.get_http_status_code() == 400
    assert '"param": "temperature"' in error.serialize_as_json()  # mlflow models serve's 400 body names it too
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.param, copy.message) == (RequestError, "temperature", error.message)


def test_openai_error_takes_param_from_any_copy_of_request_error(tmp_path):
    shutil.copy(ROOT / "chatpack" / "protocol" / "errors.py", tmp_path / "errors_copy.py")
    spec = importlib.util.spec_from_file_location("errors_copy", tmp_path / "errors_copy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    foreign = module.RequestError("messages", "messages[0].role: 'wizard' is not one of ...")
    assert not isinstance(foreign, RequestError)
    assert openai_error(foreign) == (400, error_body(400, foreign.message, "messages"))
    assert openai_error(foreign)[1]["error"] == {"message": foreign.message, "type": "invalid_request_error",
                                                 "param": "messages", "code": "invalid_request_error"}


def test_other_bad_requests_have_no_param_and_failures_are_500_without_details():
    plain = MlflowException.invalid_parameter_value("Failed to enforce schema")
    assert openai_error(plain) == (400, error_body(400, "Failed to enforce schema", None))
    status, body = openai_error(RuntimeError("secret internals"))
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "secret" not in body["error"]["message"] and "RuntimeError" in body["error"]["message"]
    assert openai_error(MlflowException("boom"))[0] == 500  # INTERNAL_ERROR is not a bad request


def test_mlflow_schema_enforcement_failures_become_a_short_400_naming_the_column():
    from mlflow.pyfunc import _validate_prediction_input

    with pytest.raises(MlflowException) as caught:
        _validate_prediction_input({"messages": M, "max_tokens": 10**23}, None, chat_or_prompt_signature().inputs, None)
    assert len(caught.value.message) > 1000  # MLflow's message: the data and the whole schema
    status, body = openai_error(caught.value)
    assert status == 400 and body["error"]["param"] == "max_tokens"
    assert body["error"]["message"].startswith("max_tokens: Incompatible input types for column max_tokens")
    assert len(body["error"]["message"]) <= 320 and "\n" not in body["error"]["message"]
    long = MlflowException.invalid_parameter_value("first line " + "x" * 500 + "\nsecond line")
    status, body = openai_error(long)
    assert status == 400 and body["error"]["param"] is None
    assert len(body["error"]["message"]) <= 300 and "second" not in body["error"]["message"]


# -- the request models are whole at import --------------------------------------------------------------------------

def test_request_models_are_complete_at_import():
    assert all(model.__pydantic_complete__ for model in REQUEST_MODELS)


def test_a_copy_of_the_protocol_imported_like_a_served_model_validates_on_its_own(tmp_path):
    """A served model imports its own copy of the package (the server's modules out of ``sys.modules`` meanwhile);
    after the server's modules are back, the copy's models must not resolve anything through them."""
    shutil.copytree(ROOT / "chatpack" / "protocol", tmp_path / "chatpack" / "protocol",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "chatpack" / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        with own_imports({"chatpack"}):
            from chatpack.protocol import chat_request as copied
    finally:
        sys.path.remove(str(tmp_path))
    assert copied.__file__.startswith(str(tmp_path)) and copied.parse_request is not parse_request
    assert copied.parse_request({"messages": M, "n": 2.0}).options.n == 2
    with pytest.raises(MlflowException) as caught:
        copied.parse_request({"messages": [{"role": "wizard", "content": "x"}]})
    assert not isinstance(caught.value, RequestError) and caught.value.param == "messages"
    assert openai_error(caught.value)[1]["error"]["param"] == "messages"


def test_text_content_parts_read_as_the_string_they_stand_for():
    """OpenAI's content-parts form, which LangChain and agent frameworks send, is one string: texts joined by lines."""
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    request = parse_request({"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                                          {"role": "user", "content": parts}]})
    assert [m["content"] for m in request.messages] == ["Be brief.", "Hello\nthere"]

