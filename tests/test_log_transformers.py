"""log_transformers: the transformers flavour with the OpenAI chat schema, offline, on the tiny fixture and SmolLM2."""

from __future__ import annotations

import json

import mlflow
import pytest
import transformers
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from openai.types.chat import ChatCompletion

from chatpack.pins import TRANSFORMERS_MODEL_PACKAGES, installed_pins
from chatpack.sources.fetch import fetched_model
from steps import log_transformers
from tests.conftest import copy_project, mlflow_run

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]


def log_with_step(*args: str) -> tuple[str, str]:
    assert log_transformers.main(list(args)) == 0
    run = mlflow.last_active_run()
    return run.info.run_id, MlflowClient().get_run(run.info.run_id).data.tags["chatpack.model_uri"]


@pytest.fixture(scope="session")
def fixture_transformers_model(fixture_fetch_run) -> str:
    return log_with_step("--fetch_run_id", fixture_fetch_run, "--max_new_tokens", "12")[1]


@pytest.fixture(scope="session")
def loaded_fixture_model(fixture_transformers_model):
    return mlflow.pyfunc.load_model(fixture_transformers_model)


def test_model_uri_is_a_logged_model_recorded_on_the_run(fixture_transformers_model, fixture_fetch_run):
    assert fixture_transformers_model.startswith("models:/m-")
    logged = mlflow.get_logged_model(fixture_transformers_model.removeprefix("models:/"))
    assert logged.name == "chat-transformers"
    meta = mlflow.models.get_model_info(fixture_transformers_model).metadata
    fetch_tags = MlflowClient().get_run(fixture_fetch_run).data.tags
    assert meta["source_model"] == "fixture:tiny-random-phi3"
    assert meta["source_revision"] == fetch_tags["chatpack.revision.resolved"]
    assert fetch_tags["chatpack.sha256.model.safetensors"] in meta["weights_sha256"]
    assert meta["test_fixture"].startswith("true")
    assert meta["chatpack_fetch_run_id"] == fixture_fetch_run


def test_multi_turn_chat_returns_an_openai_chat_completion_with_exact_usage(loaded_fixture_model, fixture_fetch_run):
    replies = loaded_fixture_model.predict({"messages": CONVERSATION, "max_tokens": 5})
    assert len(replies) == 1
    completion = ChatCompletion.model_validate(replies[0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(fetched_model(fixture_fetch_run).hf_dir)
    prompt_ids = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    assert completion.usage.prompt_tokens == len(prompt_ids)
    assert completion.usage.completion_tokens == 5  # random weights never stop early within 5 tokens
    assert completion.usage.total_tokens == len(prompt_ids) + 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.role == "assistant"
    assert completion.model == "fixture:tiny-random-phi3"


def test_model_config_default_applies_when_the_request_sets_no_max_tokens(loaded_fixture_model):
    reply = ChatCompletion.model_validate(loaded_fixture_model.predict({"messages": CONVERSATION})[0])
    assert reply.usage.completion_tokens == 12


@pytest.mark.parametrize(
    ("request_body", "error", "names"),
    [
        ({"temperature": 0.5}, MlflowException, "messages"),
        ({"messages": []}, MlflowException, "empty conversation"),
        ({"messages": [{"role": "user", "content": 5}]}, MlflowException, "content"),
        ({"messages": [{"content": "hi"}]}, MlflowException, "role"),
        ({"messages": CONVERSATION, "max_tokens": -1}, ValueError, "max_new_tokens"),
    ],
)
def test_bad_requests_raise_as_readme_documents(loaded_fixture_model, request_body, error, names):
    with pytest.raises(error, match=names):
        loaded_fixture_model.predict(request_body)


def test_flavour_limits_documented_in_readme_still_hold(loaded_fixture_model):
    """The flavour accepts these without error (README says so); if MLflow starts rejecting them, update README."""
    unknown_role = loaded_fixture_model.predict({"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2})
    assert ChatCompletion.model_validate(unknown_role[0]).usage.completion_tokens == 2
    zero = loaded_fixture_model.predict({"messages": CONVERSATION, "max_tokens": 0})  # falls back to model_config
    assert ChatCompletion.model_validate(zero[0]).usage.completion_tokens == 12


def test_logged_requirements_are_pinned_to_this_environment(fixture_transformers_model):
    path = mlflow.pyfunc.get_model_dependencies(fixture_transformers_model)
    lines = [ln.strip() for ln in open(path) if ln.strip() and not ln.startswith("#")]
    assert lines == installed_pins(TRANSFORMERS_MODEL_PACKAGES)
    assert not any("torchvision" in ln for ln in lines)


def test_registering_gives_a_loadable_version(fixture_fetch_run):
    _, uri = log_with_step("--fetch_run_id", fixture_fetch_run, "--registered_model_name", "tiny-chat-tf")
    version = MlflowClient().search_model_versions("name = 'tiny-chat-tf'")[0]
    assert uri.removeprefix("models:/") in version.source
    reply = mlflow.pyfunc.load_model("models:/tiny-chat-tf/1").predict({"messages": CONVERSATION, "max_tokens": 1})
    assert ChatCompletion.model_validate(reply[0]).usage.completion_tokens == 1


def test_reference_only_mode_is_refused_for_a_non_hub_source(fixture_fetch_run, capsys):
    code = log_transformers.main(["--fetch_run_id", fixture_fetch_run, "--save_pretrained", "false"])
    assert code == 2
    assert "save_pretrained" in capsys.readouterr().err


def test_bad_generation_defaults_are_refused_naming_the_flag(fixture_fetch_run, capsys):
    assert log_transformers.main(["--fetch_run_id", fixture_fetch_run, "--top_p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert log_transformers.main(["--fetch_run_id", "nope"]) == 2
    assert "fetch_run_id" in capsys.readouterr().err


@pytest.mark.bundled
def test_bundled_smollm2_answers_through_pyfunc(bundled_fetch_run):
    _, uri = log_with_step("--fetch_run_id", bundled_fetch_run, "--model_name", "smollm2-transformers")
    model = mlflow.pyfunc.load_model(uri)
    reply = model.predict({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                           "max_tokens": 24})
    completion = ChatCompletion.model_validate(reply[0])
    assert "Paris" in completion.choices[0].message.content
    print(json.dumps(reply[0], indent=1))


@pytest.mark.e2e
def test_mlflow_run_log_transformers_end_to_end(tmp_path, fixture_fetch_run):
    project = copy_project(tmp_path / "project")
    result = mlflow_run(project, "log_transformers", {"fetch_run_id": fixture_fetch_run, "max_new_tokens": "4"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = mlflow.search_runs(filter_string="tags.`chatpack.step` = 'log_transformers'", order_by=["start_time DESC"],
                             max_results=1, output_format="list")[0]
    assert run.data.tags["mlflow.project.entryPoint"] == "log_transformers"
    reply = mlflow.pyfunc.load_model(run.data.tags["chatpack.model_uri"]).predict({"messages": CONVERSATION})
    assert ChatCompletion.model_validate(reply[0]).usage.completion_tokens == 4


def test_generation_defaults_decode_greedily_unless_sampling_is_asked_for():
    from chatpack.flavours.model_config import GenerationDefaults

    assert GenerationDefaults(max_new_tokens=8).transformers_config() == {"max_new_tokens": 8, "do_sample": False}
    assert GenerationDefaults(temperature=0.0).transformers_config() == {"do_sample": False}
    assert GenerationDefaults(temperature=0.7, top_p=0.9).transformers_config() == {"temperature": 0.7, "top_p": 0.9,
                                                                          "do_sample": True}
    with pytest.raises(ValueError, match="do_sample/temperature"):
        GenerationDefaults(temperature=0.7, do_sample=False).check()


def test_reference_only_mode_records_the_fetched_commit_and_loads_from_the_hub_cache(monkeypatch, tmp_path,
                                                                                     fixture_fetch_run):
    """save_pretrained=false stores the hub repo and the commit fetch_model resolved (not the hub's latest)."""
    import shutil

    import huggingface_hub.constants

    from tests.conftest import run_fetch

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    hub = tmp_path / "hub"
    repo = hub / "models--acme--tiny-chat"
    shutil.copytree(fetched_model(fixture_fetch_run).hf_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    fetch_run = run_fetch("--model", "acme/tiny-chat")
    _, uri = log_with_step("--fetch_run_id", fetch_run, "--save_pretrained", "false", "--model_name", "ref-only")
    flavor = mlflow.models.get_model_info(uri).flavors["transformers"]
    assert flavor["source_model_name"] == "acme/tiny-chat"
    assert flavor["source_model_revision"] == commit
    assert "model_binary" not in flavor
    local = mlflow.artifacts.download_artifacts(uri)
    assert not list(__import__("pathlib").Path(local).rglob("*.safetensors"))
