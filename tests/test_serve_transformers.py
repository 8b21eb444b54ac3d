"""A transformers-flavour model behind `serve`: stop applied during generation and cut from the reply, for every source
kind offline; token streaming; the same strict requests as the ONNX flavour; and what MLflow's own pyfunc does with
`stop` (README's table)."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import mlflow
import openai
import pytest
from mlflow.models import Model

from chatpack.serving.served_model import ServedModel
from chatpack.serving.transformers_adapter import TransformersChat
from chatpack.sources.fetch import fetched_model
from steps import log_transformers
from tests.conftest import run_fetch, wait_for_http
from tests.helpers import client, logged, serve_in_thread

MESSAGES = [{"role": "user", "content": "Say something."}]
HUB_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def stop_inside(text: str) -> str:
    """A stop sequence (a word of ``text``, so it is whole tokens) that first occurs after the reply's start."""
    for word in text.split()[1:]:
        if len(word) >= 3 and text.find(word) > 0:
            return word
    raise AssertionError(f"no stop sequence found in {text!r}")


@pytest.fixture(scope="module")
def fixture_uri(fixture_fetch_run) -> str:
    return logged(log_transformers, fixture_fetch_run, "--max_new_tokens", "16")


@pytest.fixture(scope="module")
def server(fixture_uri):
    with serve_in_thread(ServedModel(fixture_uri)) as base:
        wait_for_http(base + "/health", timeout=120)
        yield base


def test_stop_ends_generation_and_is_cut_from_whole_and_streamed_replies(server):
    api = client(server)
    whole = api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16).choices[0].message.content
    stop = stop_inside(whole)
    reply = api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16, stop=[stop])
    assert reply.choices[0].message.content == whole[: whole.find(stop)]
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens < 16  # generation ended at the stop, not at max_tokens
    chunks = list(api.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16, stop=stop, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == whole[: whole.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_replies_stream_token_by_token_and_equal_the_flavours_own_greedy_reply(server, fixture_uri):
    *chunks, counted = list(client(server).chat.completions.create(model="m", messages=MESSAGES, max_tokens=8,
                                                                   stream=True, stream_options={"include_usage": True}))
    assert sum(bool(c.choices[0].delta.content) for c in chunks) > 3  # not one whole-reply chunk
    own = mlflow.pyfunc.load_model(fixture_uri).predict({"messages": MESSAGES, "max_tokens": 8})[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == own["choices"][0]["message"]["content"]
    assert counted.choices == [] and counted.usage.prompt_tokens == own["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 600}]}, "messages"),  # context: 512 tokens
        ({"messages": [{"role": "user", "content": "word " * 600}], "stream": True}, "messages"),
        ({"messages": MESSAGES, "logprobs": True}, "logprobs"),  # not implemented for this flavour: refused
        ({"messages": MESSAGES, "logprobs": True, "stream": True}, "logprobs"),
    ],
)
def test_bad_requests_get_400_naming_the_field(server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        result = client(server).chat.completions.create(model="m", **kwargs)
        list(result) if kwargs.get("stream") else None
    assert err.value.body["param"] == param
    assert err.value.body["message"].startswith(param)
    if "word" in str(kwargs):
        assert "context is 512 tokens" in err.value.body["message"]


def test_text_completions_are_refused_naming_prompt(server):
    with pytest.raises(openai.BadRequestError) as err:
        client(server).completions.create(model="m", prompt="Hello")
    assert err.value.body["param"] == "prompt" and "transformers flavour" in err.value.body["message"]


def test_n_gives_that_many_choices_whole_or_streamed(server):
    reply = client(server).chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, n=2)
    assert len(reply.choices) == 2 and reply.usage.completion_tokens == 8
    *chunks, counted = list(client(server).chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=4, n=2, stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].index for c in chunks if c.choices[0].finish_reason] == [0, 1]
    assert counted.usage.completion_tokens == 8 and counted.usage.prompt_tokens == reply.usage.prompt_tokens


def test_n_seeded_choices_are_distinct_samples_reproducible_as_a_set(fixture_fetch_run):
    uri = logged(log_transformers, fixture_fetch_run, "--model_name", "sampling", "--do_sample", "true")
    local = mlflow.artifacts.download_artifacts(uri)
    adapter = TransformersChat(local, Model.load(str(Path(local) / "MLmodel")))
    request = {"messages": MESSAGES, "max_tokens": 8, "n": 3, "temperature": 1.0, "seed": 7}
    texts = [c["message"]["content"] for c in adapter.predict(request)[0]["choices"]]
    assert len(set(texts)) == 3
    assert [c["message"]["content"] for c in adapter.predict(request)[0]["choices"]] == texts


@pytest.fixture
def hub_cache(monkeypatch, tmp_path, fixture_fetch_run):
    """A hub cache holding the fixture as `acme/tiny-chat` (no network: HF_HUB_OFFLINE is set for every test)."""
    repo = tmp_path / "hub" / "models--acme--tiny-chat"
    shutil.copytree(fetched_model(fixture_fetch_run).hf_dir, repo / "snapshots" / HUB_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


def source(kind: str, fetch_run: str, tmp_path: Path) -> str:
    if kind == "fixture":
        return fetch_run
    if kind == "local":
        shutil.copytree(fetched_model(fetch_run).hf_dir, tmp_path / "tiny-local")
        return run_fetch("--model", str(tmp_path / "tiny-local"))
    return run_fetch("--model", "acme/tiny-chat")


def stop_through_serve_and_pyfunc(model_uri: str) -> tuple[str, str, str, dict]:
    """(unstopped reply, stop, reply through serve's adapter, pyfunc outcome) for one logged model."""
    local = mlflow.artifacts.download_artifacts(model_uri)
    adapter = TransformersChat(local, Model.load(str(Path(local) / "MLmodel")))
    whole = adapter.predict({"messages": MESSAGES, "max_tokens": 16})[0]["choices"][0]["message"]["content"]
    stop = stop_inside(whole)
    served = adapter.predict({"messages": MESSAGES, "max_tokens": 16, "stop": [stop]})[0]["choices"][0]
    try:
        own = mlflow.pyfunc.load_model(local).predict({"messages": MESSAGES, "max_tokens": 16, "stop": [stop]})[0]
        outcome = {"content": own["choices"][0]["message"]["content"], "tokens": own["usage"]["completion_tokens"]}
    except OSError as exc:
        outcome = {"error": exc}
    return whole, stop, served["message"]["content"], outcome


@pytest.mark.parametrize("kind", ["fixture", "local", "hub"])
def test_stop_works_offline_for_every_source_kind_through_serve_and_only_for_hub_ones_through_pyfunc(
        kind, request, tmp_path, fixture_fetch_run):
    if kind == "hub":
        request.getfixturevalue("hub_cache")
    fetch_run = source(kind, fixture_fetch_run, tmp_path)
    assert fetched_model(fetch_run).info["source_kind"] == kind
    uri = logged(log_transformers, fetch_run, "--model_name", f"stop-{kind}")
    shutil.rmtree(tmp_path / "tiny-local", ignore_errors=True)  # served elsewhere: the source folder is not there
    whole, stop, served, pyfunc = stop_through_serve_and_pyfunc(uri)
    assert served == whole[: whole.find(stop)]
    if kind == "hub":  # MLflow loads the tokenizer by the hub id (here from the hub cache) and leaves the stop in
        assert stop in pyfunc["content"] and pyfunc["tokens"] < 16
    else:  # MLflow calls AutoTokenizer.from_pretrained("<source name or path>"), which nothing can load here
        assert isinstance(pyfunc["error"], OSError)


@pytest.mark.bundled
def test_stop_on_the_bundled_model_through_serve(bundled_fetch_run):
    uri = logged(log_transformers, bundled_fetch_run, "--model_name", "stop-bundled", "--max_new_tokens", "24")
    local = mlflow.artifacts.download_artifacts(uri)
    adapter = TransformersChat(local, Model.load(str(Path(local) / "MLmodel")))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    whole = adapter.predict({"messages": question})[0]["choices"][0]["message"]["content"]
    assert "Paris" in whole
    stopped = adapter.predict({"messages": question, "stop": ["Paris"]})[0]
    assert stopped["choices"][0]["message"]["content"] == whole[: whole.find("Paris")]
    assert stopped["choices"][0]["finish_reason"] == "stop"
