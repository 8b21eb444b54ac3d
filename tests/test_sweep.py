"""The sweep: several ONNX models in one evaluate run (named by recipe), the speed-vs-damage table and its Pareto
front, and the single-model parameters still working."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from chatpack.evaluation.champion import Verdict
from chatpack.evaluation.intervals import Interval
from chatpack.evaluation.sweep import is_pareto, sweep_markdown, sweep_rows
from steps import evaluate, log_onnx_pyfunc, log_transformers
from tests.conftest import FIXTURE_MODEL, run_fetch, small_eval_set


def summary(quality: float, tokens_per_s: float) -> dict[str, float]:
    return {"model_size_mb": 100.0, "decode_tokens_per_s": tokens_per_s * 1.2, "tokens_per_s": tokens_per_s,
            "quality_score": quality, "quality_score_ci_low": quality - 0.03, "quality_score_ci_high": quality + 0.03}


def test_sweep_rows_mark_the_pareto_front_of_speed_against_damage():
    summaries = {"transformers": summary(0.5, 30), "onnx_a": summary(0.45, 90), "onnx_b": summary(0.5, 60),
                 "onnx_c": summary(0.4, 50)}
    damage = {"onnx_a": {"damage_kld_mean": 0.4, "damage_ppl_reference": 18.0, "damage_ppl_onnx": 25.0},
              "onnx_b": {"damage_kld_mean": 0.01, "damage_ppl_reference": 18.0, "damage_ppl_onnx": 18.2},
              "onnx_c": {"damage_kld_mean": 0.5, "damage_ppl_reference": 18.0, "damage_ppl_onnx": 30.0}}
    verdicts = {n: Verdict(Interval(0.5 - s["quality_score"], 0.0, 0.06), s["tokens_per_s"] / 30, n == "onnx_b")
                for n, s in summaries.items() if n != "transformers"}
    rows = sweep_rows(summaries, damage, verdicts, "transformers", "onnx_b")
    by = {r["model"]: r for r in rows}
    assert [r["model"] for r in rows] == list(summaries)
    assert by["transformers"]["kld_mean"] == 0.0 and by["transformers"]["ppl"] == 18.0
    assert {n for n, r in by.items() if r["pareto"]} == {"transformers", "onnx_a", "onnx_b"}  # c: slower and worse
    assert by["onnx_b"]["champion"] and not by["onnx_a"]["non_inferior"]
    text = sweep_markdown(rows)
    assert "| onnx_b | 100.0 | 72.0 | 60.0 | 18.20 | 0.0100 |" in text and "**yes**" in text
    no_damage = {**by["onnx_c"], "kld_mean": math.nan}
    assert not is_pareto(no_damage, rows)


@pytest.fixture(scope="module")
def sweep_run(fixture_fetch_run, tmp_path_factory) -> str:
    def logged(step, fetch_run_id):
        assert step.main(["--fetch_run_id", fetch_run_id, "--max_new_tokens", "8"]) == 0
        return mlflow.last_active_run().info.run_id

    int8_fetch = run_fetch("--model", FIXTURE_MODEL, "--recipe", "int8", "--damage_tokens", "512")
    tf = logged(log_transformers, fixture_fetch_run)
    onnx_default, onnx_int8 = logged(log_onnx_pyfunc, fixture_fetch_run), logged(log_onnx_pyfunc, int8_fetch)
    subset = small_eval_set(tmp_path_factory.mktemp("sweep") / "subset.jsonl")
    assert evaluate.main(["--transformers_run_id", tf, "--onnx_run_id", onnx_default, "--onnx_run_ids", onnx_int8,
                          "--max_new_tokens", "4", "--eval_data", subset]) == 0
    return mlflow.last_active_run().info.run_id


def test_evaluate_takes_several_onnx_models_named_by_recipe(sweep_run):
    metrics = MlflowClient().get_run(sweep_run).data.metrics
    for name in ("onnx_default", "onnx_int8"):
        assert metrics[f"{name}_quality_score_ci_low"] <= metrics[f"{name}_quality_score"]
        assert f"{name}_quality_gap_ci_high" in metrics and f"{name}_speedup" in metrics
    assert "agreement_identical" in metrics  # the documented name: the ONNX model in view (champion or closest)
    artifacts = {a.path for a in MlflowClient().list_artifacts(sweep_run)}
    assert {"sweep.md", "pareto.png", "eval_report.md", "eval_summary.json"} <= artifacts
    table = open(mlflow.artifacts.download_artifacts(run_id=sweep_run, artifact_path="sweep.md")).read()
    assert table.count("\n| onnx_") == 2 and "| transformers |" in table
    png = mlflow.artifacts.download_artifacts(run_id=sweep_run, artifact_path="pareto.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_same_model_twice_and_no_onnx_model_are_refused(capsys):
    assert evaluate.main(["--transformers_model_uri", "models:/m-x", "--onnx_model_uris", "models:/m-a,models:/m-a"]) \
        == 2
    assert "listed twice" in capsys.readouterr().err
    assert evaluate.main(["--transformers_model_uri", "models:/m-x"]) == 2
    assert "onnx_model_uri: required" in capsys.readouterr().err
