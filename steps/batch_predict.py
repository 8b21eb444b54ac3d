"""Entry point ``batch_predict``: score a large prompt set with a chat model on Spark; the executors load the model.

Inputs (MLproject params, same names as the flags):
  model_uri     a chat model (``models:/<name>@champion``, ``models:/m-...``, ``runs:/...``); an alias is resolved once
                on the driver to a version, so every executor loads the same one
  input_path    JSONL with ``messages`` per line (and optionally ``id``); default: the shipped eval prompts
  spark_master  ``local[2]`` (the default: this machine, one Python worker per core); a standalone cluster:
                ``spark://HOST:7077``; empty: the session the cluster already has (Databricks)
  max_tokens    reply budget per prompt
  partitions    Spark partitions = model copies working at once (size it to the executor cores)

On a cluster (``spark://...``): every executor's Python worker loads the model itself with
``mlflow.pyfunc.load_model`` from the tracking server (the driver downloads nothing), so the workers need
(1) the tracking URI reachable from them: an ``http(s)://`` ``mlflow server`` with proxied artifacts
(``--serve-artifacts``), not a ``sqlite:``/``file:`` store on the driver's disk; the URI and MLflow's credential
variables (``MLFLOW_TRACKING_TOKEN``, ``_USERNAME``/``_PASSWORD``, TLS settings) go to them as
``spark.executorEnv.*``; (2) a Python with the project's pins (``requirements.txt``: mlflow, onnxruntime-genai, pandas,
pyarrow ...) at the same path on every worker, named by ``PYSPARK_PYTHON`` on the driver (``chatpack`` itself is not
needed there: the model brings its code); (3) the driver reachable from the workers (``SPARK_LOCAL_IP`` /
``spark.driver.host``). Example: ``PYSPARK_PYTHON=/opt/venv/bin/python MLFLOW_TRACKING_URI=http://mlflow:5000
mlflow run . -e batch_predict --env-manager local -P spark_master=spark://spark-master:7077 -P model_uri=...``.

Outputs, on the MLflow run (tag ``chatpack.step=batch_predict``; tag ``chatpack.scored_model_uri``: the URI the
executors loaded): artifact ``predictions/`` (Parquet: id, reply, finish_reason, prompt_tokens, completion_tokens,
worker = host:pid of the Python worker that scored the row); metrics ``prompts``, ``spark_seconds``,
``spark_prompts_per_s``, ``spark_model_copies`` (Python workers that loaded the model).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import mlflow

from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.tracking import step_run
from steps import common

STEP = "batch_predict"
SCORED_MODEL_TAG = "chatpack.scored_model_uri"
SPARK_MASTER = r"local(\[(\d+|\*)(,\d+)?\])?|spark://[^\s/:]+:\d+(,[^\s/:]+:\d+)*|yarn|k8s://\S+"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", required=True, help="Chat model URI, e.g. models:/my-chat@champion.")
    p.add_argument("--input_path", default="", help=f"JSONL prompts; empty = {DEFAULT_EVAL_DATA.name}.")
    p.add_argument("--spark_master", default="local[2]",
                   help="Spark master: local[N]; spark://HOST:PORT for a standalone cluster, whose workers need the "
                        "tracking URI reachable and the project's pins in PYSPARK_PYTHON (see the module docstring); "
                        "empty = the cluster's own session.")
    p.add_argument("--max_tokens", type=int, default=64, help="Reply budget per prompt.")
    p.add_argument("--partitions", type=int, default=2, help="Spark partitions (parallel model copies).")
    common.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    from chatpack.spark_scoring import pinned_model_uri, run_batch

    if args.max_tokens <= 0:
        raise ValueError(f"max_tokens: must be a positive integer, got {args.max_tokens}")
    if args.partitions <= 0:
        raise ValueError(f"partitions: must be a positive integer, got {args.partitions}")
    if args.spark_master and not re.fullmatch(SPARK_MASTER, args.spark_master):
        raise ValueError(f"spark_master: expected local, local[N], local[*], spark://HOST:PORT, yarn, k8s://URL or "
                         f"empty (the cluster's own session), got {args.spark_master!r}")
    input_path = args.input_path or str(DEFAULT_EVAL_DATA)
    if not Path(input_path).is_file():
        raise ValueError(f"input_path: {input_path} does not exist")
    params = {k: v for k, v in vars(args).items() if k != "verbose"}
    with step_run(STEP, params), tempfile.TemporaryDirectory() as tmp:
        try:
            model_uri = pinned_model_uri(args.model_uri)
        except mlflow.exceptions.MlflowException as exc:
            raise ValueError(f"model_uri: {args.model_uri}: {exc.message}") from None
        mlflow.set_tag(SCORED_MODEL_TAG, model_uri)
        out = Path(tmp) / "predictions"
        metrics = run_batch(model_uri, input_path, out, args.spark_master, args.max_tokens, args.partitions)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), "predictions")
        print(f"scored {metrics['prompts']:.0f} prompts in {metrics['spark_seconds']:.1f} s "
              f"({metrics['spark_prompts_per_s']:.2f} prompts/s, {metrics['spark_model_copies']:.0f} model copies)")


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
