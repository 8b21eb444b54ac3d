"""Spark batch inference on local[2]: executors that load the model themselves give the same greedy replies as
in-process scoring; aliases are pinned on the driver; the executor function needs no chatpack on the workers.
(A real standalone cluster with a tracking server: tests/test_spark_cluster.py, opt-in.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.spark_scoring import executor_scorer, pinned_model_uri, read_prompts, score_in_process
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
    assert metrics["spark_model_copies"] == 2  # one per Python worker of local[2]
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions")
    spark_replies = pd.read_parquet(folder).set_index("id")
    expected = score_in_process(onnx_uri, prompts, max_tokens=8)
    assert len(spark_replies) == len(prompts)
    assert {i: spark_replies.loc[i, "reply"] for i in expected} == expected
    assert set(spark_replies["completion_tokens"]) <= set(range(1, 9))
    pids = {int(w.rsplit(":", 1)[1]) for w in spark_replies["worker"]}
    assert len(pids) == 2 and os.getpid() not in pids  # scored in Spark's Python workers, not in the driver


def test_alias_is_pinned_to_a_version_on_the_driver(onnx_uri):
    name = "batch-pin-test"
    version = mlflow.register_model(onnx_uri, name).version
    MlflowClient().set_registered_model_alias(name, "champion", version)
    assert pinned_model_uri(f"models:/{name}@champion") == f"models:/{name}/{version}"
    assert pinned_model_uri(f"models:/{name}/latest") == f"models:/{name}/{version}"
    assert pinned_model_uri(onnx_uri) == onnx_uri


def test_unknown_alias_is_refused_naming_the_param(onnx_uri, capsys):
    assert batch_predict.main(["--model_uri", "models:/no-such-model@champion"]) == 2
    assert "model_uri: models:/no-such-model@champion" in capsys.readouterr().err


@pytest.mark.parametrize("master", ["foo", "spark://127.0.0.1", "local[two]"])
def test_a_malformed_spark_master_is_refused_before_spark_starts(master, capsys):
    assert batch_predict.main(["--model_uri", "models:/m@champion", "--spark_master", master]) == 2
    assert "spark_master: expected local, local[N]" in capsys.readouterr().err


def test_executor_function_unpickles_without_chatpack():
    """Workers need MLflow and the pins, not this project: the function Spark ships must not reference chatpack."""
    from pyspark import cloudpickle

    blob = cloudpickle.dumps(executor_scorer("models:/m-x", "http://127.0.0.1:1", "http://127.0.0.1:1", 8))
    code = ("import pickle, sys; sys.modules['chatpack'] = None; "  # any `import chatpack...` now raises ImportError
            "f = pickle.loads(sys.stdin.buffer.read()); print(f.__name__)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "score"


def test_bad_prompt_file_is_refused_naming_the_line(tmp_path, onnx_uri, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" +
                   json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    assert batch_predict.main(["--model_uri", onnx_uri, "--input_path", str(bad)]) == 2
    assert "prompts.jsonl:2: messages[0].role" in capsys.readouterr().err
