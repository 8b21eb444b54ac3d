"""Chat logprobs and ``POST /v1/completions`` on ``serve``, driven by the official openai client against a real server
over the tiny fixture ONNX model (greedy unless said otherwise)."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from steps import log_onnx_pyfunc
from tests.helpers import MESSAGES, client, logged, serve_cli

PROMPT = "<|user|>\nSay something.<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def onnx_server(fixture_fetch_run):
    uri = logged(log_onnx_pyfunc, fixture_fetch_run, "--max_new_tokens", "16")
    with serve_cli(uri) as base:
        yield base, uri


def test_chat_logprobs_are_greedy_maxima_that_join_to_the_reply(onnx_server):
    base, _ = onnx_server
    api = client(base)
    plain = api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10)
    reply = api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10, logprobs=True, top_logprobs=4)
    choice = reply.choices[0]
    assert plain.choices[0].logprobs is None
    assert choice.message.content == plain.choices[0].message.content  # asking for logprobs changes nothing
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens == 10
    assert "".join(e.token for e in content) == choice.message.content
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 4 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert entry.logprob == pytest.approx(tops[0])
        assert bytes(entry.bytes).decode() == entry.token
        assert all(bytes(t.bytes).decode() == t.token for t in entry.top_logprobs)
    only = api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10, logprobs=True)
    assert [e.top_logprobs for e in only.choices[0].logprobs.content] == [[]] * 10
    assert [e.token for e in only.choices[0].logprobs.content] == [e.token for e in content]
    assert [e.logprob for e in only.choices[0].logprobs.content] == pytest.approx([e.logprob for e in content])


def test_chat_logprobs_for_every_choice_of_n(onnx_server):
    base, _ = onnx_server
    reply = client(base).chat.completions.create(model="m", messages=MESSAGES, max_tokens=5, n=2, logprobs=True,
                                                 top_logprobs=1)
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert "".join(e.token for e in choice.logprobs.content) == choice.message.content


def test_streamed_chat_logprobs_join_to_the_non_streamed_ones(onnx_server):
    base, _ = onnx_server
    api = client(base)
    kwargs = {"model": "m", "messages": MESSAGES, "max_tokens": 12, "logprobs": True, "top_logprobs": 2}
    whole = api.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = list(api.chat.completions.create(stream=True, **kwargs))
    streamed = []
    for chunk in chunks:
        choice = chunk.choices[0]
        if choice.logprobs is not None:
            assert "".join(e.token for e in choice.logprobs.content) == (choice.delta.content or "")
            streamed += choice.logprobs.content
    assert [e.token for e in streamed] == [e.token for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-4)
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs] for e in whole]


def test_completions_answer_raw_prompts_with_openais_text_completion_object(onnx_server):
    base, uri = onnx_server
    reply = client(base).completions.create(model="m", prompt=PROMPT)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.model == uri.removeprefix("models:/")
    (choice,) = reply.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    assert reply.usage.completion_tokens == 16  # OpenAI's default max_tokens
    chat = client(base).chat.completions.create(model="m", messages=[{"role": "user", "content": "Say something."}],
                                                max_tokens=16)
    assert choice.text == chat.choices[0].message.content  # the fixture's template, written out by hand
    assert reply.usage.prompt_tokens == chat.usage.prompt_tokens


def test_completions_give_one_choice_per_prompt_and_n_in_order(onnx_server):
    base, _ = onnx_server
    api = client(base)
    prompts = ["Once upon a time", "The capital of France is"]
    alone = [api.completions.create(model="m", prompt=p, max_tokens=5).choices[0].text for p in prompts]
    reply = api.completions.create(model="m", prompt=prompts, max_tokens=5, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.text for c in reply.choices] == [alone[0], alone[0], alone[1], alone[1]]
    assert reply.usage.completion_tokens == 20


def test_completions_stop_sequences_end_and_are_cut(onnx_server):
    base, _ = onnx_server
    api = client(base)
    free = api.completions.create(model="m", prompt=PROMPT, max_tokens=20).choices[0].text
    stop = free[len(free) // 2:][:2]
    cut = api.completions.create(model="m", prompt=PROMPT, max_tokens=20, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == free[:free.index(stop)]


def test_completions_logprobs_use_the_legacy_shape(onnx_server):
    base, _ = onnx_server
    choice = client(base).completions.create(model="m", prompt=PROMPT, max_tokens=8, logprobs=3).choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 8
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3 and logprob == pytest.approx(max(top.values())) and logprob <= 0


def test_streamed_completions_join_to_the_whole_reply(onnx_server):
    base, _ = onnx_server
    api = client(base)
    whole = api.completions.create(model="m", prompt=[PROMPT, "Hello"], max_tokens=10, logprobs=1)
    chunks = list(api.completions.create(model="m", prompt=[PROMPT, "Hello"], max_tokens=10, logprobs=1, stream=True,
                                         stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    for i, choice in enumerate(whole.choices):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert "".join(c.text for c in mine) == choice.text
        assert [t for c in mine for t in c.logprobs.tokens] == choice.logprobs.tokens
        assert [c.finish_reason for c in mine][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_completions_count_each_prompt_once_whatever_n(onnx_server):
    api = client(onnx_server[0])
    whole = api.completions.create(model="m", prompt=[PROMPT, "Hello"], max_tokens=4, n=2, seed=1, temperature=1.0)
    chunks = list(api.completions.create(model="m", prompt=[PROMPT, "Hello"], max_tokens=4, n=2, seed=1,
                                         temperature=1.0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_completions_end_with_done_over_raw_sse(onnx_server):
    base, _ = onnx_server
    body = json.dumps({"prompt": "Hi", "max_tokens": 3, "stream": True}).encode()
    request = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [e for e in resp.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])
    assert "usage" not in json.loads(events[-2].removeprefix("data: "))  # only with include_usage


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": MESSAGES, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": MESSAGES, "logprobs": "yes"}, "logprobs"),
        ({"messages": MESSAGES, "logprobs": True, "stream": True, "top_logprobs": 30}, "top_logprobs"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),  # not streamed
        ({"messages": MESSAGES, "stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MESSAGES, "stream": True, "stream_options": {"continuous_usage_stats": True}}, "stream_options"),
    ],
)
def test_bad_chat_logprobs_and_stream_options_get_400_naming_the_field(onnx_server, kwargs, param):
    base, _ = onnx_server
    with pytest.raises(openai.BadRequestError) as err:
        result = client(base).chat.completions.create(model="m", **kwargs)
        list(result) if kwargs.get("stream") else None
    assert err.value.body["param"] == param and err.value.body["message"].startswith(param)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": "Hi", "logprobs": 6}, "logprobs"),
        ({"prompt": "Hi", "logprobs": True}, "logprobs"),
        ({"prompt": "Hi", "echo": True}, "echo"),
        ({"prompt": "Hi", "suffix": "end"}, "suffix"),
        ({"prompt": "Hi", "best_of": 2}, "best_of"),
        ({"prompt": "Hi", "logit_bias": {"50": 5}}, "logit_bias"),
        ({"prompt": "Hi", "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"prompt": "Hi", "presence_penalty": 1}, "presence_penalty"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", ""]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "Hi", "temperature": 3}, "temperature"),
        ({"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "Hi", "n": 9}, "n"),
        ({"prompt": "Hi", "extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"prompt": "word " * 600}, "prompt"),  # context: 512 tokens
        ({"prompt": ["word " * 600, "Hi"], "stream": True}, "prompt"),
        ({"prompt": "Hi", "stream_options": {"include_usage": True}}, "stream_options"),  # not streamed
        ({"prompt": "Hi", "stream": True, "stream_options": {"foo": 1}}, "stream_options"),
    ],
)
def test_bad_completions_get_400_naming_the_field(onnx_server, kwargs, param):
    base, _ = onnx_server
    with pytest.raises(openai.BadRequestError) as err:
        result = client(base).completions.create(model="m", **kwargs)
        list(result) if kwargs.get("stream") else None
    assert err.value.body["param"] == param and err.value.body["message"].startswith(param)


def test_neutral_values_of_unimplemented_completion_fields_are_accepted(onnx_server):
    base, _ = onnx_server
    reply = client(base).completions.create(model="m", prompt="Hi", max_tokens=2, echo=False, best_of=1,
                                            frequency_penalty=0, presence_penalty=0, logit_bias={}, user="u")
    assert reply.usage.completion_tokens == 2
