"""The ONNX model's typed engine client: ``serve`` hands it the request it parsed once, and that path gives the same
replies as the pyfunc's dict path (``mlflow models serve``, ``mlflow.pyfunc`` callers, models of another version)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from chatpack.flavours.onnx_chat.engine_client import ENGINE_CLIENT_VERSION, Completion, Delta, Finish
from chatpack.protocol.chat_request import parse_request
from chatpack.protocol.errors import RequestError
from chatpack.serving.served_model import ServedModel
from steps import log_onnx_pyfunc

pytestmark = pytest.mark.bundled

HI = [{"role": "user", "content": "Say hello."}]
UNIT = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]}
TOOLS = [{"type": "function", "function": {"name": "w", "parameters": UNIT}}]
CASES = {
    "plain": {"messages": HI, "max_tokens": 8},
    "stop": {"messages": HI, "max_tokens": 12, "stop": ["e"]},
    "json_schema": {"messages": HI, "max_tokens": 24,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": UNIT}}},
    "tools_required": {"messages": HI, "max_tokens": 32, "tools": TOOLS, "tool_choice": "required"},
    "logprobs": {"messages": HI, "max_tokens": 5, "logprobs": True, "top_logprobs": 2},
    "n_seeded": {"messages": HI, "max_tokens": 6, "n": 2, "temperature": 1.0, "seed": 7},
    "text_completion": {"prompt": "Once upon a time", "max_tokens": 6, "text_completion": True, "logprobs": True,
                        "top_logprobs": 1},
}


@pytest.fixture(scope="module")
def served(bundled_fetch_run) -> ServedModel:
    """The bundled model (the tiny fixture's 512-token context cannot hold a tool prompt)."""
    assert log_onnx_pyfunc.main(["--fetch_run_id", bundled_fetch_run, "--max_new_tokens", "16"]) == 0
    uri = MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    model = ServedModel(uri)
    model.load()
    assert model.load_error is None
    return model


def without_ids(reply: dict) -> dict:
    """A reply or chunk as a client compares it: all but its id, time, tool-call ids (random) and cache hits."""
    def same(value):
        if isinstance(value, dict):
            return {k: "call_*" if k == "id" and str(v).startswith("call_") else same(v) for k, v in value.items()}
        return [same(v) for v in value] if isinstance(value, list) else value

    kept = {k: v for k, v in reply.items() if k not in ("id", "created")}
    if isinstance(kept.get("usage"), dict):  # how many prompt tokens were cached depends on what the rows held
        kept["usage"] = {k: v for k, v in kept["usage"].items() if k != "prompt_tokens_details"}
    return same(kept)


def through_pyfunc(served: ServedModel, call):
    """``call()`` with the typed client switched off: the dict path, as for a model of another version."""
    client, served.client = served.client, None
    try:
        return call()
    finally:
        served.client = client


def test_serve_reaches_the_engine_through_the_typed_client(served):
    assert served.client is not None and served.client.version == ENGINE_CLIENT_VERSION
    assert served.client is served.model.unwrap_python_model().engine_client  # MLflow's public accessor
    assert served.describe()["parallel"] >= 1 and "batch" in served.describe()


@pytest.mark.parametrize("case", sorted(CASES))
def test_typed_path_and_pyfunc_path_give_the_same_whole_reply(served, case):
    request = parse_request(CASES[case])
    typed = served.reply(request)
    assert without_ids(typed) == without_ids(through_pyfunc(served, lambda: served.reply(request)))
    assert typed["model"] == served.name


@pytest.mark.parametrize("case", sorted(set(CASES) - {"n_seeded"}))
def test_typed_path_and_pyfunc_path_stream_the_same_chunks(served, case):
    request = parse_request(CASES[case])
    typed = [without_ids(c) for c in served.stream(request)]
    other = [without_ids(c) for c in through_pyfunc(served, lambda: list(served.stream(request)))]
    assert typed == [{**c, "model": served.name} for c in other]
    assert typed[-1]["choices"][0]["finish_reason"] and typed[-1]["usage"]["completion_tokens"] > 0


def test_the_client_returns_typed_results(served):
    client = served.client
    done = client.complete(parse_request({"messages": HI, "max_tokens": 4, "logprobs": True}))
    assert type(done).__name__ == Completion.__name__ and done.completion_tokens == 4
    assert done.choices[0].finish_reason == "length" and len(done.choices[0].logprobs) == 4
    events = list(client.stream(parse_request({"messages": HI, "max_tokens": 4})))
    assert all(type(e).__name__ == Delta.__name__ for e in events[:-1])
    assert type(events[-1]).__name__ == Finish.__name__ and events[-1].completion_tokens == 4
    text = "".join(e.delta.get("content") or "" for e in events[:-1])
    assert text == done.choices[0].text  # greedy: the same reply whole or streamed
    ids = client.prompt_ids(parse_request({"messages": HI}))
    assert ids and client.detokenize(client.tokenize("hello world")) == "hello world"


def test_bad_requests_fail_at_the_call_naming_the_field(served):
    # The model raises its own copy of RequestError (it runs the code it was logged with): same name, same param.
    with pytest.raises(Exception) as caught:
        served.client.stream(parse_request({"messages": HI, "n": 2}))
    assert type(caught.value).__name__ == RequestError.__name__ and caught.value.param == "n"
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(Exception) as caught:
        served.client.complete(parse_request({"messages": long}))
    assert type(caught.value).__name__ == RequestError.__name__ and caught.value.param == "messages"


def test_a_reply_of_tool_calls_reads_as_a_message(served):
    reply = served.reply(parse_request(CASES["tools_required"]))
    choice = reply["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        call = choice["message"]["tool_calls"][0]
        assert call["function"]["name"] == "w" and json.loads(call["function"]["arguments"])["unit"] in ("c", "f")
    else:  # cut at max_tokens inside the call: still a message, with no half call
        assert choice["finish_reason"] == "length"
