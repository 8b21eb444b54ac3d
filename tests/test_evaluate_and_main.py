"""evaluate (quality, speed, size, champion, aliases) and main (the chained run with reuse)."""

from __future__ import annotations

import json
import math
import shlex

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from chatpack.evaluation.data import DEFAULT_EVAL_DATA, load_eval_rows
from chatpack.evaluation.quality import agreement, contains_reference, score_row
from chatpack.evaluation.rules import rule_pass_rate
from chatpack.pipeline.reuse import find_reusable_run, logged_params
from chatpack.project import CODE_VERSION_TAG, code_version
from steps import evaluate, log_onnx_pyfunc, log_transformers
from tests.conftest import FIXTURE_MODEL, copy_project, mlflow_run, small_eval_set


def model_run(step, fetch_run_id: str) -> str:
    assert step.main(["--fetch_run_id", fetch_run_id, "--max_new_tokens", "8"]) == 0
    return mlflow.last_active_run().info.run_id


@pytest.fixture(scope="session")
def eval_subset(tmp_path_factory) -> str:
    return small_eval_set(tmp_path_factory.mktemp("eval") / "subset.jsonl")


@pytest.fixture(scope="session")
def evaluate_run(fixture_fetch_run, eval_subset) -> str:
    tf, onnx = model_run(log_transformers, fixture_fetch_run), model_run(log_onnx_pyfunc, fixture_fetch_run)
    assert evaluate.main(["--transformers_run_id", tf, "--onnx_run_id", onnx, "--max_new_tokens", "6",
                          "--registered_model_name", "eval-tiny", "--eval_data", eval_subset]) == 0
    return mlflow.last_active_run().info.run_id


def test_shipped_eval_set_has_40_rows_of_every_kind_and_its_references_pass():
    rows = load_eval_rows(DEFAULT_EVAL_DATA)
    assert len(rows) >= 40
    assert {"factual", "arithmetic", "instruction", "rewrite", "summarise"} <= {r.category for r in rows}
    assert sum(bool(r.rules) for r in rows) >= 10
    for row in rows:
        assert score_row(row, row.reference)["row_score"] == pytest.approx(1.0), row.id


def test_quality_metrics_tell_right_from_wrong():
    assert contains_reference("The capital of Spain is Madrid.", "Madrid") == 1.0
    assert contains_reference("The capital of Spain is Barcelona.", "Madrid") == 0.0
    assert rule_pass_rate("blue sky", [{"type": "max_words", "value": 1}]) == 0.0
    assert rule_pass_rate('{"name": "Ada"}', [{"type": "json_object"}, {"type": "contains", "value": "Ada"}]) == 1.0
    assert agreement(["a b", "c"], ["a b", "d"])["agreement_identical"] == 0.5


def test_bad_eval_data_is_refused_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}], "reference": "x"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing 'messages'"):
        load_eval_rows(bad)
    bad.write_text('{"id": "a", "messages": [], "reference": "x"}\n')
    with pytest.raises(ValueError, match=r":1: messages: must not be empty"):
        load_eval_rows(bad)


def test_evaluate_logs_metrics_table_plot_report_and_sets_aliases(evaluate_run, eval_subset):
    run = MlflowClient().get_run(evaluate_run)
    metrics = run.data.metrics
    for flavour in ("transformers", "onnx"):
        m = {key: metrics[f"{flavour}_{key}"] for key in (
            "quality_score", "quality_score_ci_low", "quality_score_ci_high", "tokens_per_s", "decode_tokens_per_s",
            "ttft_p50_s", "latency_p50_s", "latency_p95_s", "peak_rss_mb", "model_size_mb")}
        assert all(math.isfinite(v) for v in m.values()), (flavour, m)
        assert 0 <= m["quality_score_ci_low"] <= m["quality_score"] <= m["quality_score_ci_high"] <= 1
        assert m["tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0 and m["ttft_p50_s"] > 0, (flavour, m)
        assert 0 < m["latency_p50_s"] <= m["latency_p95_s"], (flavour, m)
        assert m["peak_rss_mb"] > 100 and m["model_size_mb"] > 0, (flavour, m)
    assert 0 <= metrics["agreement_identical"] <= 1 and 0 <= metrics["agreement_rouge_l"] <= 1
    assert metrics["onnx_quality_gap_ci_low"] <= metrics["onnx_quality_gap"] <= metrics["onnx_quality_gap_ci_high"]
    assert metrics["onnx_non_inferior"] in (0.0, 1.0) and metrics["onnx_speedup"] > 0
    artifacts = {a.path for a in MlflowClient().list_artifacts(evaluate_run)}
    assert {"eval_rows.json", "comparison.png", "eval_report.md", "eval_summary.json"} <= artifacts
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=evaluate_run, artifact_path="eval_rows.json"))
                       .read())
    assert len(table["data"]) == len(load_eval_rows(eval_subset)) == 48
    assert "transformers_reply" in table["columns"] and "onnx_reply" in table["columns"]
    png = mlflow.artifacts.download_artifacts(run_id=evaluate_run, artifact_path="comparison.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    champion = run.data.tags["chatpack.champion"]
    aliases = MlflowClient().get_registered_model("eval-tiny").aliases
    assert set(aliases) == {"champion", "challenger"} and aliases["champion"] != aliases["challenger"]
    version = MlflowClient().get_model_version("eval-tiny", aliases["champion"])
    assert version.tags["chatpack.flavour"] == champion
    reply = mlflow.pyfunc.load_model("models:/eval-tiny@champion").predict(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply[0]["usage"]["completion_tokens"] == 2


def test_per_flavour_quality_runs_are_linked_to_their_models(evaluate_run, eval_subset):
    """mlflow.genai.evaluate with code scorers: metrics on each LoggedModel, one trace per prompt with its scores."""
    children = mlflow.search_runs(filter_string=f"tags.`mlflow.parentRunId` = '{evaluate_run}'", output_format="list")
    assert sorted(r.data.tags["chatpack.flavour"] for r in children) == ["onnx", "transformers"]
    n_rows = len(load_eval_rows(eval_subset))
    for child in children:
        model_id = child.data.tags["chatpack.model_uri"].removeprefix("models:/")
        linked = {m.key: m.value for m in mlflow.get_logged_model(model_id).metrics or []}
        assert {"row_score/mean", "rouge_l/mean", "exact_match/mean", "tokens_per_s", "quality_score",
                "quality_score_ci_low"} <= set(linked)
        assert linked["row_score/mean"] == pytest.approx(linked["quality_score"])
        traces = mlflow.search_traces(run_id=child.info.run_id, return_type="list")
        assert len(traces) == n_rows
        scored = {a.name for a in traces[0].info.assessments}
        assert {"row_score", "contains_reference", "reference"} <= scored


def _fake_step_run(entry_point: str, params: dict, version: str) -> str:
    with mlflow.start_run() as run:
        mlflow.log_params(logged_params(entry_point, params))
        mlflow.set_tags({"mlflow.project.entryPoint": entry_point, CODE_VERSION_TAG: version})
    return run.info.run_id


def test_reuse_hits_only_on_same_params_as_logged_and_same_code(tmp_path):
    experiment = mlflow.get_experiment_by_name("chatpack-tests").experiment_id
    folder = str(tmp_path / "my models" / "chat model")  # spaces: MLflow stores it shell-quoted
    params = {"model": folder, "precision": "int4"}
    run_id = _fake_step_run("fetch_model", params, "files:abc")
    stored = MlflowClient().get_run(run_id).data.params
    assert stored["model"] == shlex.quote(folder) != folder
    assert stored["revision"] == "main"  # defaults are logged too
    assert find_reusable_run(experiment, "fetch_model", params, "files:abc").info.run_id == run_id
    assert find_reusable_run(experiment, "fetch_model", {**params, "precision": "fp32"}, "files:abc") is None
    assert find_reusable_run(experiment, "fetch_model", params, "files:other") is None
    assert find_reusable_run(experiment, "log_onnx_pyfunc", {"fetch_run_id": run_id}, "files:abc") is None


@pytest.mark.parametrize("edited", ["chatpack/evaluation/quality.py", "chatpack/engine/detokenizer.py",
                                    "chatpack/flavours/onnx_chat/pyfunc_model.py", "chatpack/project.py",
                                    "steps/common.py", "data/eval_prompts.jsonl"])
def test_code_version_changes_when_a_file_in_any_subpackage_changes(tmp_path, edited):
    project = copy_project(tmp_path / "p")  # a copy without .git: the version is a hash of the code files
    before = code_version(project)
    assert before.startswith("files:") and code_version(project) == before
    (project / "README.md").write_text("docs are not code\n")
    assert code_version(project) == before
    path = project / edited
    path.write_text(path.read_text() + "\n")
    assert code_version(project) != before


def children_of(run_id: str) -> list:
    return mlflow.search_runs(filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", output_format="list")


@pytest.mark.e2e
def test_mlflow_run_main_chains_four_children_then_reuses_them_then_sweeps_then_forces(tmp_path):
    project = copy_project(tmp_path / "project")
    params = {"model": FIXTURE_MODEL, "max_new_tokens": "4", "registered_model_name": "e2e-tiny",
              "eval_data": small_eval_set(tmp_path / "subset.jsonl"), "recipes": "default"}

    def last_main():
        return mlflow.search_runs(filter_string="tags.`chatpack.step` = 'main'", order_by=["start_time DESC"],
                                  max_results=1, output_format="list")[0]

    first = mlflow_run(project, "main", params)
    assert first.returncode == 0, first.stderr[-4000:]
    parent = last_main()
    assert sorted(c.data.tags["mlflow.project.entryPoint"] for c in children_of(parent.info.run_id)) == \
        ["evaluate", "fetch_model", "log_onnx_pyfunc", "log_transformers"]
    assert parent.data.metrics["steps_reused"] == 0
    assert set(MlflowClient().get_registered_model("e2e-tiny").aliases) == {"champion", "challenger"}

    second = mlflow_run(project, "main", params)
    assert second.returncode == 0, second.stderr[-4000:]
    rerun = last_main()
    assert rerun.data.metrics["steps_reused"] == 4
    assert rerun.data.tags["chatpack.run.evaluate"] == parent.data.tags["chatpack.run.evaluate"]

    # A sweep: the default recipe's runs are reused, the new recipe gets its own fetch and ONNX model, and one
    # evaluate run compares both ONNX models with the transformers model.
    sweep = mlflow_run(project, "main", {**params, "recipes": "default,int8"})
    assert sweep.returncode == 0, sweep.stderr[-4000:]
    swept = last_main()
    assert swept.data.tags["chatpack.reused_steps"] == \
        "fetch_model[default],log_transformers,log_onnx_pyfunc[default]"
    assert sorted(c.data.tags["mlflow.project.entryPoint"] for c in children_of(swept.info.run_id)) == \
        ["evaluate", "fetch_model", "log_onnx_pyfunc"]
    assert swept.data.tags["chatpack.run.fetch_model.default"] == parent.data.tags["chatpack.run.fetch_model"]
    evaluated = MlflowClient().get_run(swept.data.tags["chatpack.run.evaluate"])
    assert {"onnx_default_quality_score", "onnx_int8_quality_score", "onnx_int8_quality_gap_ci_high"} <= \
        set(evaluated.data.metrics)
    assert {"sweep.md", "pareto.png"} <= {a.path for a in MlflowClient().list_artifacts(evaluated.info.run_id)}

    forced_run = mlflow_run(project, "main", {**params, "force": "true"})
    assert forced_run.returncode == 0, forced_run.stderr[-4000:]
    forced = last_main()
    assert forced.data.metrics["steps_reused"] == 0
    assert forced.data.tags["chatpack.run.fetch_model"] != parent.data.tags["chatpack.run.fetch_model"]
