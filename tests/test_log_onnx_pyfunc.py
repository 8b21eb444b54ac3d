"""log_onnx_pyfunc: the onnxruntime-genai chat pyfunc (models-from-code), on the tiny fixture and SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
import transformers
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from chatpack.pins import ONNX_MODEL_PACKAGES, installed_pins
from chatpack.sources.fetch import fetched_model
from steps import log_onnx_pyfunc
from tests.conftest import copy_project, free_port, mlflow_run, wait_for_http

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]


def log_with_step(*args: str) -> str:
    assert log_onnx_pyfunc.main(list(args)) == 0
    return MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]


@pytest.fixture(scope="session")
def onnx_model_uri(fixture_fetch_run) -> str:
    return log_with_step("--fetch_run_id", fixture_fetch_run, "--max_new_tokens", "16")


@pytest.fixture(scope="session")
def onnx_model(onnx_model_uri):
    return mlflow.pyfunc.load_model(onnx_model_uri)


def content(reply: dict) -> str:
    return ChatCompletion.model_validate(reply).choices[0].message.content


def ask(model, messages=CONVERSATION, **options) -> dict:
    replies = model.predict({"messages": messages, **options})
    assert len(replies) == 1
    return replies[0]


def test_chat_reply_is_an_openai_chat_completion_with_exact_usage(onnx_model, fixture_fetch_run):
    completion = ChatCompletion.model_validate(ask(onnx_model, max_tokens=5))
    tokenizer = transformers.AutoTokenizer.from_pretrained(fetched_model(fixture_fetch_run).hf_dir)
    prompt_ids = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    assert completion.object == "chat.completion"
    assert completion.usage.prompt_tokens == len(prompt_ids)
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == len(prompt_ids) + 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.model == "fixture:tiny-random-phi3"


def test_logged_default_applies_only_when_the_request_sets_no_max_tokens(onnx_model):
    assert ChatCompletion.model_validate(ask(onnx_model)).usage.completion_tokens == 16
    assert ChatCompletion.model_validate(ask(onnx_model, max_tokens=3)).usage.completion_tokens == 3


def test_raw_prompt_form_answers_with_the_generated_string(onnx_model, fixture_fetch_run):
    tokenizer = transformers.AutoTokenizer.from_pretrained(fetched_model(fixture_fetch_run).hf_dir)
    prompt = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|system|>")
    reply = onnx_model.predict({"prompt": prompt, "max_tokens": 8})
    assert reply == [content(ask(onnx_model, max_tokens=8))]


def test_every_row_of_a_batch_is_answered_in_order(onnx_model):
    rows = [{"messages": [{"role": "user", "content": text}], "max_tokens": 6} for text in ("Hello", "Paris", "Two")]
    replies = onnx_model.predict(rows)
    assert len(replies) == 3
    for row, reply in zip(rows, replies):
        assert content(reply) == content(ask(onnx_model, row["messages"], max_tokens=6))


def test_stream_yields_chunks_whose_deltas_join_to_the_greedy_reply(onnx_model):
    chunks = [ChatCompletionChunk.model_validate(c)
              for c in onnx_model.predict_stream({"messages": CONVERSATION, "max_tokens": 12})]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) >= 4 and len({c.id for c in chunks}) == 1
    joined = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert joined == content(ask(onnx_model, max_tokens=12))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 12
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_stop_sequence_ends_the_reply_and_is_cut_from_it(onnx_model):
    full = content(ask(onnx_model, max_tokens=16))
    stop = full[6:9]
    expected = full[: full.find(stop)]
    completion = ChatCompletion.model_validate(ask(onnx_model, max_tokens=16, stop=[stop, "never-there"]))
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens < 16
    chunks = list(onnx_model.predict_stream({"messages": CONVERSATION, "max_tokens": 16, "stop": [stop]}))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_sampling_with_a_seed_is_repeatable(onnx_model):
    first = content(ask(onnx_model, max_tokens=10, temperature=1.0, seed=7))
    assert first == content(ask(onnx_model, max_tokens=10, temperature=1.0, seed=7))


def test_n_seeded_choices_are_distinct_and_the_same_again(onnx_model):
    options = {"max_tokens": 10, "temperature": 1.0, "seed": 7, "n": 3}
    texts = [c["message"]["content"] for c in ask(onnx_model, **options)["choices"]]
    assert len(set(texts)) == 3 and [c["message"]["content"] for c in ask(onnx_model, **options)["choices"]] == texts


def test_neutral_values_of_unimplemented_fields_pass_the_signature_and_change_nothing(onnx_model):
    neutral = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "store": False, "metadata": {"a": "b"},
               "service_tier": "auto", "logprobs": False, "top_logprobs": 0}
    assert content(ask(onnx_model, max_tokens=5, **neutral)) == content(ask(onnx_model, max_tokens=5))


LONG = [{"role": "user", "content": "word " * 600}]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"temperature": 0.5}, "messages: required"),
        ({"messages": []}, "messages: must not be empty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, r"messages\[0\].role: 'wizard'"),
        ({"messages": [{"content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content"),
        ({"messages": CONVERSATION, "max_tokens": 0}, "max_tokens: must be >= 1"),
        ({"messages": CONVERSATION, "max_tokens": -3}, "max_tokens: must be >= 1"),
        ({"messages": CONVERSATION, "max_tokens": 2**31}, "max_tokens: must be <= 2147483647"),
        ({"messages": CONVERSATION, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": CONVERSATION, "temperature": -0.5}, "temperature: must be between 0 and 2"),
        ({"messages": CONVERSATION, "top_p": 1.5}, r"top_p: must be in \(0, 1\], got 1.5"),
        ({"messages": CONVERSATION, "top_p": 0.0}, r"top_p: must be in \(0, 1\]"),
        ({"messages": CONVERSATION, "n": 2, "stream": True}, None),
        ({"messages": LONG}, "messages: the prompt is .* tokens; this model's context is 512"),
        ({"messages": CONVERSATION, "prompt": "x"}, "not both"),
        ({"messages": CONVERSATION, "tools": [{"type": "function", "function": {"parameters": {}}}]},
         r"tools\[0\].function.name: required"),
        ({"messages": CONVERSATION, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "objekt"}}}}, "response_format.json_schema.schema: cannot be enforced"),
        ({"messages": CONVERSATION, "presence_penalty": 0.5}, "presence_penalty: only 0 is accepted"),
        ({"messages": CONVERSATION, "store": True}, "store: only false is accepted"),
    ],
)
def test_bad_requests_raise_an_mlflow_exception_naming_the_field(onnx_model, body, names):
    if names is None:  # n=2 with stream=true is fine for predict (stream is a predict_stream matter)
        assert len(ChatCompletion.model_validate(onnx_model.predict(body)[0]).choices) == 2
        with pytest.raises(MlflowException, match="n: streaming supports n=1"):
            list(onnx_model.predict_stream(body))
        return
    with pytest.raises(MlflowException, match=names):
        onnx_model.predict(body)


def test_one_model_answers_concurrent_threads_without_cross_talk(onnx_model):
    prompts = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}] for i in range(16)]
    sequential = [content(ask(onnx_model, p, max_tokens=8)) for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda p: content(ask(onnx_model, p, max_tokens=8)), prompts))
    assert concurrent == sequential
    assert len(set(sequential)) > 1  # the prompts really differ, so cross-talk would show


def test_logged_model_is_code_plus_artifacts_with_no_pickle(onnx_model_uri):
    local = Path(mlflow.artifacts.download_artifacts(onnx_model_uri))
    pickles = [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert pickles == []
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models-from-code, not cloudpickle
    assert Path(flavor["model_code_path"]).name == "model_code.py"
    assert (local / "model_code.py").is_file() and not (local / "python_model.pkl").exists()
    assert (local / "artifacts" / "onnx_model" / "genai_config.json").is_file()


RUNTIME_PREFIXES = ("chatpack/protocol/", "chatpack/engine/")
RUNTIME_SINGLES = {"chatpack/__init__.py", "chatpack/flavours/__init__.py", "chatpack/flavours/onnx_chat/__init__.py",
                   "chatpack/flavours/onnx_chat/pyfunc_model.py", "chatpack/flavours/onnx_chat/engine_client.py"}


def test_logged_model_carries_only_its_runtime_code(onnx_model_uri):
    code = Path(mlflow.artifacts.download_artifacts(onnx_model_uri)) / "code"
    carried = sorted(p.relative_to(code).as_posix() for p in code.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    outside = [f for f in carried if f not in RUNTIME_SINGLES and not f.startswith(RUNTIME_PREFIXES)]
    assert outside == []  # no server, Spark, evaluation, builder, sources or pipeline code
    assert RUNTIME_SINGLES <= set(carried)
    assert "chatpack/engine/chat_engine.py" in carried and "chatpack/protocol/chat_request.py" in carried


def test_runtime_code_imports_nothing_outside_itself(onnx_model_uri, tmp_path):
    """Import the model's code folder alone: every chatpack module comes from it, and none is missing."""
    code = Path(mlflow.artifacts.download_artifacts(onnx_model_uri)) / "code"
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import chatpack.flavours.onnx_chat.pyfunc_model;"
        "mods = {n: m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'chatpack'};"
        "bad = [n for n, f in mods.items() if not f.startswith(sys.argv[1])];"
        "assert not bad, bad; print(len(mods))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(code)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 5


def test_model_records_source_precision_provider_and_runtime_version(onnx_model_uri, fixture_fetch_run):
    meta = mlflow.models.get_model_info(onnx_model_uri).metadata
    tags = MlflowClient().get_run(fixture_fetch_run).data.tags
    assert meta["source_model"] == "fixture:tiny-random-phi3"
    assert meta["source_revision"] == tags["chatpack.revision.resolved"]
    assert meta["precision"] == "int4" and meta["execution_provider"] == "cpu"
    assert meta["onnxruntime_genai_version"] == "0.18.0"
    assert meta["test_fixture"].startswith("true")


def test_logged_requirements_are_pinned_to_this_environment(onnx_model_uri):
    path = mlflow.pyfunc.get_model_dependencies(onnx_model_uri)
    lines = [ln.strip() for ln in open(path) if ln.strip() and not ln.startswith("#")]
    assert lines == installed_pins(ONNX_MODEL_PACKAGES)


def test_bad_defaults_and_do_sample_are_refused_naming_the_flag(fixture_fetch_run, capsys):
    assert log_onnx_pyfunc.main(["--fetch_run_id", fixture_fetch_run, "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err


@pytest.mark.bundled
def test_bundled_smollm2_answers_and_stops_at_end_of_turn(bundled_fetch_run):
    model = mlflow.pyfunc.load_model(log_with_step("--fetch_run_id", bundled_fetch_run, "--model_name", "smol-onnx"))
    completion = ChatCompletion.model_validate(
        ask(model, [{"role": "system", "content": "Answer in one short sentence."},
                    {"role": "user", "content": "What is the capital of France?"}], max_tokens=64))
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens < 64
    print(json.dumps(completion.model_dump(exclude_none=True), indent=1))


@pytest.mark.e2e
def test_mlflow_run_log_onnx_pyfunc_end_to_end(tmp_path, fixture_fetch_run):
    project = copy_project(tmp_path / "project")
    result = mlflow_run(project, "log_onnx_pyfunc", {"fetch_run_id": fixture_fetch_run, "max_new_tokens": "4"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = mlflow.search_runs(filter_string="tags.`chatpack.step` = 'log_onnx_pyfunc'", order_by=["start_time DESC"],
                             max_results=1, output_format="list")[0]
    assert run.data.tags["mlflow.project.entryPoint"] == "log_onnx_pyfunc"
    reply = mlflow.pyfunc.load_model(run.data.tags["chatpack.model_uri"]).predict({"messages": CONVERSATION})
    assert ChatCompletion.model_validate(reply[0]).usage.completion_tokens == 4


def post(url: str, body: bytes) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.e2e
def test_mlflow_models_serve_answers_both_input_forms(onnx_model_uri, onnx_model, fixture_fetch_run):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", onnx_model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=120, proc=server)
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = post(url, json.dumps({"messages": CONVERSATION, "max_tokens": 6}).encode())
        assert status == 200 and content(body[0]) == content(ask(onnx_model, max_tokens=6))
        tokenizer = transformers.AutoTokenizer.from_pretrained(fetched_model(fixture_fetch_run).hf_dir)
        prompt = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
        status, body = post(url, json.dumps({"prompt": prompt, "max_tokens": 6}).encode())
        assert status == 200 and body == [content(ask(onnx_model, max_tokens=6))]
        status, body = post(url, json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode())
        assert status == 400 and "messages[0].role" in body["message"] and body["param"] == "messages"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_threads_can_be_set_when_the_logged_model_is_loaded(onnx_model_uri):
    as_logged = mlflow.pyfunc.load_model(onnx_model_uri).unwrap_python_model().engine
    assert as_logged.threads is None  # logged as 0: onnxruntime's default
    pinned = mlflow.pyfunc.load_model(onnx_model_uri, model_config={"threads": 1}).unwrap_python_model().engine
    assert pinned.threads == 1  # what `serve --threads 1` passes
