"""Both flavours behind the stock `mlflow models serve`: replies, bad input, and a short concurrent load."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import transformers
from openai.types.chat import ChatCompletion

from chatpack.sources.fetch import fetched_model
from steps import log_onnx_pyfunc, log_transformers
from tests.helpers import endpoint, post

pytestmark = pytest.mark.e2e
ONE = [{"role": "user", "content": "Hello there"}]
MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]


@pytest.fixture(scope="module")
def onnx_endpoint(fixture_fetch_run):
    yield from endpoint(log_onnx_pyfunc, fixture_fetch_run)


@pytest.fixture(scope="module")
def transformers_endpoint(fixture_fetch_run):
    yield from endpoint(log_transformers, fixture_fetch_run)


@pytest.mark.parametrize("flavour", ["onnx", "transformers"])
def test_chat_multi_turn_and_batch_replies_validate_as_openai_types(flavour, request):
    url = request.getfixturevalue(f"{flavour}_endpoint")
    for messages in (ONE, MULTI):
        status, body, _ = post(url, {"messages": messages, "max_tokens": 5})
        assert status == 200 and len(body) == 1  # the scoring server answers a list
        assert ChatCompletion.model_validate(body[0]).usage.completion_tokens == 5
    rows = [{"messages": ONE, "max_tokens": 4}, {"messages": MULTI, "max_tokens": 4}]
    status, body, _ = post(url, {"dataframe_records": rows})
    assert status == 200
    replies = body["predictions"] if isinstance(body, dict) else body
    assert len(replies) == 2
    for reply in replies:
        ChatCompletion.model_validate(reply)


def test_raw_prompt_form_over_http(onnx_endpoint, fixture_fetch_run):
    tokenizer = transformers.AutoTokenizer.from_pretrained(fetched_model(fixture_fetch_run).hf_dir)
    prompt = tokenizer.apply_chat_template(MULTI, add_generation_prompt=True, tokenize=False)
    status, body, _ = post(onnx_endpoint, {"prompt": prompt, "max_tokens": 5})
    _, chat, _ = post(onnx_endpoint, {"messages": MULTI, "max_tokens": 5})
    assert status == 200 and body == [chat[0]["choices"][0]["message"]["content"]]


def test_logprobs_and_text_completion_rows_pass_mlflows_schema(onnx_endpoint):
    """The signature declares logprobs, top_logprobs and text_completion: they reach the model."""
    status, body, _ = post(onnx_endpoint, {"messages": ONE, "max_tokens": 3, "logprobs": True, "top_logprobs": 2})
    assert status == 200
    content = body[0]["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(e["top_logprobs"]) == 2 for e in content)
    status, body, _ = post(onnx_endpoint, {"prompt": "Hello", "max_tokens": 3, "text_completion": True,
                                           "logprobs": True})
    assert status == 200 and body[0]["object"] == "text_completion"
    choice = body[0]["choices"][0]
    assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert len(choice["logprobs"]["tokens"]) == body[0]["usage"]["completion_tokens"] >= 1


BAD = [
    (b"{not json", None),
    ({"temperature": 0.5}, "dataframe_split"),  # no messages/prompt: MLflow's own protocol error lists input keys
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": 3}]}, "content"),
    ({"messages": ONE, "max_tokens": 0}, "max_tokens"),
    ({"messages": ONE, "max_tokens": -5}, "max_tokens"),
    ({"messages": ONE, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": ONE, "temperature": -0.5}, "temperature"),
    ({"messages": ONE, "temperature": "hot"}, "temperature"),
    ({"messages": ONE, "top_p": 1.5}, "top_p"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "context"),
    ({"messages": ONE, "presence_penalty": 0.5}, "presence_penalty"),
]


@pytest.mark.parametrize(("body", "names"), BAD)
def test_bad_input_gets_4xx_naming_the_field_and_the_server_keeps_answering(onnx_endpoint, body, names):
    status, reply, elapsed = post(onnx_endpoint, body, timeout=30)
    assert 400 <= status < 500, (status, reply)
    if names:
        assert names in reply["message"]
    assert elapsed < 30
    status, reply, _ = post(onnx_endpoint, {"messages": ONE, "max_tokens": 2})
    assert status == 200 and ChatCompletion.model_validate(reply[0]).usage.completion_tokens == 2


def test_unknown_top_level_fields_are_dropped_by_mlflow_before_the_model(onnx_endpoint):
    """MLflow's schema enforcement drops fields the signature does not declare (README documents this);
    `serve` (the OpenAI server) refuses them by name instead."""
    status, reply, _ = post(onnx_endpoint, {"messages": ONE, "max_tokens": 2, "frobnicate": True})
    assert status == 200 and reply[0]["usage"]["completion_tokens"] == 2


def test_eight_concurrent_clients_get_the_sequential_greedy_replies(onnx_endpoint):
    prompts = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(8)]
    sequential = {}
    for i, p in enumerate(prompts):
        status, reply, _ = post(onnx_endpoint, {"messages": p, "max_tokens": 16})
        sequential[i] = reply[0]["choices"][0]["message"]["content"]
    jobs = [i % len(prompts) for i in range(8 * 6)]  # 8 clients x 6 requests
    start_t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: (i, post(onnx_endpoint, {"messages": prompts[i], "max_tokens": 16})), jobs))
    wall = time.perf_counter() - start_t
    failures = [r for _, r in results if r[0] != 200]
    assert failures == []
    for i, (status, reply, _) in results:
        assert reply[0]["choices"][0]["message"]["content"] == sequential[i]
    latencies = sorted(r[2] for _, r in results)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\nload: {len(jobs)} requests from 8 clients in {wall:.2f} s, p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms")
    assert p95 < 30
