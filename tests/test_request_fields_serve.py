"""Request fields through ``serve`` over the tiny fixture ONNX model, with the official openai client and raw HTTP:
``n`` seeded choices (chat, ``/v1/completions``, streamed completions), integers too large for the model's signature
(400 naming the field on every route), and the neutral values of unimplemented chat fields that clients send."""

from __future__ import annotations

import json

import openai
import pytest

from steps import log_onnx_pyfunc
from tests.helpers import client, logged, raw, serve_cli

STORY = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def base(fixture_fetch_run):
    uri = logged(log_onnx_pyfunc, fixture_fetch_run, "--max_new_tokens", "16")
    with serve_cli(uri) as url:
        yield url


def post(url: str, body: dict) -> tuple[int, dict]:
    return raw("POST", url, json.dumps(body).encode())


# -- n and seed ------------------------------------------------------------------------------------------------------

def test_n_seeded_chat_choices_are_distinct_samples_reproducible_as_a_set(base):
    api = client(base)
    kwargs = {"model": "m", "messages": STORY, "max_tokens": 12, "n": 3, "temperature": 1.0, "seed": 7}
    texts = [c.message.content for c in api.chat.completions.create(**kwargs).choices]
    assert len(set(texts)) == 3
    assert [c.message.content for c in api.chat.completions.create(**kwargs).choices] == texts
    # choice i samples with seed + i (as vLLM): the second choice is what seed 8 gives alone
    alone = api.chat.completions.create(**{**kwargs, "n": 1, "seed": 8}).choices[0].message.content
    assert alone == texts[1]
    greedy = api.chat.completions.create(model="m", messages=STORY, max_tokens=12, n=3, seed=7)
    assert len({c.message.content for c in greedy.choices}) == 1  # greedy choices agree, seed or not


def test_n_seeded_completions_are_distinct_and_the_stream_gives_the_same_choices(base):
    api = client(base)
    kwargs = {"model": "m", "prompt": "Once upon a time", "n": 3, "temperature": 1, "seed": 7, "max_tokens": 12}
    texts = [c.text for c in api.completions.create(**kwargs).choices]
    assert len(set(texts)) == 3
    assert [c.text for c in api.completions.create(**kwargs).choices] == texts
    streamed = ["", "", ""]
    for chunk in api.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == texts


# -- integers past the model's signature -----------------------------------------------------------------------------

HUGE = 99999999999999999999999


@pytest.mark.parametrize(("route", "body", "param"), [
    ("/v1/chat/completions", {"messages": STORY, "max_tokens": HUGE}, "max_tokens"),
    ("/v1/chat/completions", {"messages": STORY, "max_completion_tokens": HUGE}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": STORY, "seed": 1e30}, "seed"),
    ("/v1/chat/completions", {"messages": STORY, "seed": 2**63}, "seed"),
    ("/v1/chat/completions", {"messages": STORY, "top_k": HUGE, "stream": True}, "top_k"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": HUGE}, "max_tokens"),
    ("/v1/completions", {"prompt": "Hi", "seed": 1e30}, "seed"),
    ("/v1/completions", {"prompt": "Hi", "seed": 1e30, "stream": True}, "seed"),
    ("/v1/responses", {"input": "Hi", "max_output_tokens": HUGE}, "max_output_tokens"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_integers_too_large_for_the_signature_are_a_short_400_naming_the_field(base, route, body, param):
    status, reply = post(base + route, body)
    assert status == 400, reply
    error = reply["error"]
    assert error["param"] == param and error["message"].startswith(param + ": must be <= ")
    assert len(error["message"]) < 200 and "schema" not in error["message"]


def test_the_largest_integers_accepted_are_answered(base):
    api = client(base)
    reply = api.chat.completions.create(model="m", messages=STORY, max_tokens=2**31 - 1, seed=2**63 - 1,
                                        temperature=1.0, n=2)
    assert len(reply.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in reply.choices)
    choices = api.completions.create(model="m", prompt="Hi", max_tokens=3, seed=2**63 - 1, temperature=1, n=2,
                                     stream=True)
    assert {c.choices[0].index for c in choices if c.choices} == {0, 1}


# -- neutral values of unimplemented chat fields ---------------------------------------------------------------------

NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "store": False,
           "metadata": {"run": "eval-1"}, "service_tier": "auto"}


@pytest.mark.parametrize("extra", [*({k: v} for k, v in NEUTRAL.items()), NEUTRAL, {"service_tier": "default"},
                                   {"logprobs": False, "top_logprobs": 0}],
                         ids=[*NEUTRAL, "all", "service_tier_default", "logprobs_false"])
def test_neutral_values_of_unimplemented_chat_fields_are_accepted_and_ignored(base, extra):
    api = client(base)
    plain = api.chat.completions.create(model="m", messages=STORY, max_tokens=4)
    reply = api.chat.completions.create(model="m", messages=STORY, max_tokens=4, **extra)
    assert reply.choices[0].message.content == plain.choices[0].message.content
    assert reply.choices[0].logprobs is None
    streamed = api.chat.completions.create(model="m", messages=STORY, max_tokens=4, stream=True, **extra)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain.choices[0].message.content


@pytest.mark.parametrize(("extra", "param"), [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"logit_bias": {"50": 5}}, "logit_bias"),
    ({"store": True}, "store"),
    ({"metadata": {"a": 1}}, "metadata"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
])
def test_other_values_of_unimplemented_chat_fields_are_refused_by_name(base, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client(base).chat.completions.create(model="m", messages=STORY, max_tokens=4, **extra)
    assert err.value.body["param"] == param and err.value.body["message"].startswith(param + ": ")
