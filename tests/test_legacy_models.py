"""A model runs the code it was logged with: an ONNX model logged before the package was reorganised (its code says
``from chatpack.onnx_pyfunc import ...``) still loads and answers under today's ``serve`` and ``mlflow models serve``,
and today's models load under ``serve`` with their own copy of the runtime code, not the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import openai
import pytest
from mlflow.tracking import MlflowClient
from openai import OpenAI

from chatpack.protocol.chat_request import parse_request
from chatpack.serving.served_model import ServedModel, code_packages
from steps import log_onnx_pyfunc
from tests.conftest import ROOT, free_port, wait_for_http
from tests.helpers import serve_in_thread

# The last commit with the flat package (every logged ONNX model carried all of ``chatpack/`` then).
LEGACY_COMMIT = "8d41377694c99f101c9987dbf1e9fa750d30ca3d"
MESSAGES = [{"role": "user", "content": "Say something."}]


def legacy_checkout(dest: Path) -> Path:
    """The project as it was at ``LEGACY_COMMIT`` (from this clone's history)."""
    known = subprocess.run(["git", "cat-file", "-e", f"{LEGACY_COMMIT}^{{commit}}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        pytest.fail(f"commit {LEGACY_COMMIT} is not in this clone; clone with full history (no --depth)")
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", LEGACY_COMMIT, "chatpack", "steps", "MLproject", "requirements.txt",
                              "data"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


@pytest.fixture(scope="module")
def legacy_model_uri(fixture_fetch_run, tmp_path_factory) -> str:
    """An ONNX model logged by the old ``log_onnx_pyfunc`` step, in its own process, from the old checkout."""
    old = legacy_checkout(tmp_path_factory.mktemp("legacy") / "project")
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    run = client.create_run(experiment.experiment_id)
    env = {**os.environ, "MLFLOW_RUN_ID": run.info.run_id, "PYTHONPATH": str(old)}
    done = subprocess.run([sys.executable, "-m", "steps.log_onnx_pyfunc", "--fetch_run_id", fixture_fetch_run,
                           "--max_new_tokens", "8"], cwd=old, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = client.get_run(run.info.run_id).data.tags["chatpack.model_uri"]
    code = Path(mlflow.artifacts.download_artifacts(uri)) / "code" / "chatpack"
    assert (code / "onnx_pyfunc.py").is_file() and (code / "server.py").is_file()  # really the old, flat layout
    return uri


def test_model_logged_before_the_new_layout_answers_under_todays_serve(legacy_model_uri):
    served = ServedModel(legacy_model_uri)
    served.load()
    assert served.load_error is None
    with serve_in_thread(served, load=False) as base:
        reply = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="any", messages=MESSAGES, max_tokens=4)
        stream = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="any", messages=MESSAGES, max_tokens=4, stream=True)
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
    assert "".join(pieces) == reply.choices[0].message.content  # greedy: the stream says the same
    # The model ran its own (old) code; the server's modules are back in place afterwards.
    assert type(served.model.unwrap_python_model()).__module__ == "chatpack.onnx_pyfunc"
    assert "chatpack.onnx_pyfunc" not in sys.modules and "chatpack.serving.served_model" in sys.modules


def test_logprobs_and_text_completions_are_refused_by_name_for_a_model_logged_without_them(legacy_model_uri):
    served = ServedModel(legacy_model_uri)
    served.load()
    api_calls = {"logprobs": lambda api: api.chat.completions.create(model="any", messages=MESSAGES, logprobs=True),
                 "prompt": lambda api: api.completions.create(model="any", prompt="Hello")}
    with serve_in_thread(served, load=False) as base:
        api = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        for param, call in api_calls.items():
            with pytest.raises(openai.BadRequestError) as err:
                call(api)
            assert err.value.body["param"] == param and "logged by chatpack" in err.value.body["message"]


def test_todays_model_loads_its_own_runtime_copy_under_serve(fixture_fetch_run):
    assert log_onnx_pyfunc.main(["--fetch_run_id", fixture_fetch_run, "--max_new_tokens", "4"]) == 0
    uri = MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert code_packages(local, "code") == {"chatpack"}
    served = ServedModel(uri)
    served.load()
    assert served.load_error is None
    model_file = Path(type(served.model.unwrap_python_model()).load_context.__code__.co_filename)
    assert model_file.parts[-5:] == ("code", "chatpack", "flavours", "onnx_chat", "pyfunc_model.py")
    assert not model_file.resolve().is_relative_to(ROOT / "chatpack")  # the model's copy, not this checkout's
    client_file = Path(type(served.client).complete.__code__.co_filename)  # the typed client is the model's too
    assert not client_file.resolve().is_relative_to(ROOT / "chatpack")
    reply = served.reply(parse_request({"messages": MESSAGES, "max_tokens": 3}))
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1


@pytest.mark.e2e
def test_model_logged_before_the_new_layout_answers_under_mlflow_models_serve(legacy_model_uri):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", legacy_model_uri, "-p",
                             str(port), "--env-manager", "local"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=180, proc=proc)
        body = json.dumps({"messages": MESSAGES, "max_tokens": 4}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            replies = json.loads(resp.read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert replies[0]["object"] == "chat.completion" and replies[0]["choices"][0]["message"]["content"] is not None
