"""``batch_predict`` on a real Spark standalone cluster (a master and two 1-core workers on 127.0.0.1, started from the
installed pyspark), with the model on a real ``mlflow server``: the workers load it from the tracking server, the
driver downloads nothing, and the replies equal in-process scoring. Opt-in: ``make test-spark-cluster``.

Evidence that the executors load the model, three ways: the driver process's artifact downloads are recorded (none
during the job); the tracking server's access log shows one download of the model's weights per Python worker; each
worker's own TMPDIR (what its executors inherit) holds a downloaded copy and the driver's holds none."""

from __future__ import annotations

import os
import re
import sys
import tempfile

import mlflow
import pandas as pd
import pytest
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.tracking import MlflowClient

from benchmarks.bench_spark import (
    WAIT_FOR_TWO_EXECUTORS,
    cluster_state,
    java_missing,
    standalone_cluster,
    tracking_server,
)
from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.spark_scoring import read_prompts, score_in_process
from steps import batch_predict, fetch_model, log_onnx_pyfunc

pytestmark = pytest.mark.spark_cluster
MODEL_NAME = "spark-cluster-chat"


@pytest.fixture(scope="module")
def server(tmp_path_factory, needs_java):
    """A tracking server this module's runs go to (the session's sqlite store is restored afterwards)."""
    saved = os.environ["MLFLOW_TRACKING_URI"]
    with tracking_server(tmp_path_factory.mktemp("mlflow-server")) as (uri, log):
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        MlflowClient().create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])  # artifacts: proxied by the server
        try:
            yield uri, log
        finally:
            os.environ["MLFLOW_TRACKING_URI"] = saved
            mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="module")
def needs_java():
    if reason := java_missing():
        pytest.skip(reason)


@pytest.fixture(scope="module")
def champion(server) -> tuple[str, str]:
    """The tiny fixture's ONNX chat model logged to the server and registered as ``spark-cluster-chat@champion``:
    (the alias URI, the LoggedModel URI)."""
    assert fetch_model.main(["--model", "fixture:tiny-random-phi3"]) == 0
    fetch_run = mlflow.last_active_run().info.run_id
    assert log_onnx_pyfunc.main(["--fetch_run_id", fetch_run]) == 0
    logged = MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    version = mlflow.register_model(logged, MODEL_NAME).version
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    return f"models:/{MODEL_NAME}@champion", logged


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, server):
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="2g") as c:
        yield c


@pytest.fixture
def driver_env(tmp_path, monkeypatch):
    """The driver binds to loopback, runs the workers' Python with this venv's interpreter (they are on this machine),
    waits for both workers' executors, and gets its own TMPDIR, so anything it downloads can be seen."""
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", WAIT_FOR_TWO_EXECUTORS)
    driver_tmp = tmp_path / "driver-tmp"
    driver_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(driver_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return driver_tmp


def test_batch_predict_on_a_standalone_cluster_loads_the_model_on_the_workers(server, champion, cluster, driver_env,
                                                                             monkeypatch):
    _, server_log = server
    alias_uri, logged_uri = champion
    model_id = logged_uri.removeprefix("models:/")
    weights = re.compile(rf'"GET /api/2\.0/mlflow-artifacts/artifacts/\S*/models/{model_id}/artifacts/\S*'
                         rf'onnx_model/model\.onnx\.data HTTP')

    downloads: list[str] = []  # every file this (driver) process fetches from the artifact proxy
    original = HttpArtifactRepository._download_file

    def recording(self, remote_file_path, local_path):
        downloads.append(remote_file_path)
        return original(self, remote_file_path, local_path)

    log_before = server_log.read_text()
    with monkeypatch.context() as patch:  # only around the job: the checks below download on the driver
        patch.setattr(HttpArtifactRepository, "_download_file", recording)
        assert batch_predict.main(["--model_uri", alias_uri, "--spark_master", cluster.master_url,
                                   "--max_tokens", "8", "--partitions", "2"]) == 0
    new_log = server_log.read_text()[len(log_before):]

    # The driver downloaded nothing; the server served the weights once per Python worker, two workers.
    assert downloads == []
    assert list(driver_env.rglob("MLmodel")) == []
    run = mlflow.last_active_run()
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.metrics["spark_model_copies"] == 2
    assert len(weights.findall(new_log)) == 2, new_log
    for worker in cluster.workers:  # each worker's executor downloaded its own copy into the worker's TMPDIR
        assert [p.parent for p in (worker / "tmp").rglob("MLmodel")], f"no model downloaded under {worker}"
    # The alias was resolved on the driver to one version for every executor.
    assert data.tags[batch_predict.SCORED_MODEL_TAG] == f"models:/{MODEL_NAME}/1"
    # The job ran on the cluster (the master lists it as a finished application), not in a local session.
    apps = cluster_state(cluster.webui_url).get("completedapps", [])
    assert [a["state"] for a in apps if a.get("name") == "chatpack-batch"] == ["FINISHED"], apps

    # The replies are those of in-process scoring, prompt for prompt (greedy).
    prompts = read_prompts(DEFAULT_EVAL_DATA)
    folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions")
    replies = pd.read_parquet(folder).set_index("id")
    assert len(replies) == len(prompts) == data.metrics["prompts"]
    assert replies["worker"].nunique() == 2
    expected = score_in_process(logged_uri, prompts, max_tokens=8)
    assert {i: replies.loc[i, "reply"] for i in expected} == expected
