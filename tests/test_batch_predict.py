"""Spark batch inference: spark_udf on local[2] gives the same greedy replies as in-process scoring."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.serving.spark_batch import read_prompts, score_in_process
from steps import batch_predict, log_onnx_pyfunc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def onnx_uri(fixture_fetch_run) -> str:
    assert log_onnx_pyfunc.main(["--fetch_run_id", fixture_fetch_run]) == 0
    return MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]


def test_spark_and_in_process_scoring_give_identical_greedy_replies(onnx_uri):
    assert batch_predict.main(["--model_uri", onnx_uri, "--max_tokens", "8", "--spark_master", "local[2]"]) == 0
    run = mlflow.last_active_run()
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    prompts = read_prompts(DEFAULT_EVAL_DATA)
    assert metrics["prompts"] == len(prompts) and metrics["spark_prompts_per_s"] > 0
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions")
    spark_replies = pd.read_parquet(folder).set_index("id")
    expected = score_in_process(onnx_uri, prompts, max_tokens=8)
    assert len(spark_replies) == len(prompts)
    assert {i: spark_replies.loc[i, "reply"] for i in expected} == expected
    assert set(spark_replies["completion_tokens"]) <= set(range(1, 9))


def test_bad_prompt_file_is_refused_naming_the_line(tmp_path, onnx_uri, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" +
                   json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    assert batch_predict.main(["--model_uri", onnx_uri, "--input_path", str(bad)]) == 2
    assert "prompts.jsonl:2: messages[0].role" in capsys.readouterr().err
