"""Entry point ``batch_predict``: score a large prompt set with ``mlflow.pyfunc.spark_udf`` on Spark.

Inputs (MLproject params, same names as the flags):
  model_uri     a chat model (``models:/<name>@champion``, ``models:/m-...``)
  input_path    JSONL with ``messages`` per line (and optionally ``id``); default: the shipped eval prompts
  spark_master  ``local[2]`` here; on Databricks or another cluster, leave empty to use the cluster's session
  max_tokens    reply budget per prompt
  partitions    Spark partitions (parallel model copies)

Outputs, on the MLflow run (tag ``chatpack.step=batch_predict``): artifact ``predictions/`` (Parquet: id, reply,
finish_reason, prompt_tokens, completion_tokens); metrics ``prompts``, ``spark_seconds``, ``spark_prompts_per_s``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlflow

from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.tracking import step_run
from steps import common

STEP = "batch_predict"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", required=True, help="Chat model URI, e.g. models:/my-chat@champion.")
    p.add_argument("--input_path", default="", help=f"JSONL prompts; empty = {DEFAULT_EVAL_DATA.name}.")
    p.add_argument("--spark_master", default="local[2]", help="Spark master; empty = the cluster's own session.")
    p.add_argument("--max_tokens", type=int, default=64, help="Reply budget per prompt.")
    p.add_argument("--partitions", type=int, default=2, help="Spark partitions (parallel model copies).")
    common.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    from chatpack.serving.spark_batch import run_batch

    if args.max_tokens <= 0:
        raise ValueError(f"max_tokens: must be a positive integer, got {args.max_tokens}")
    if args.partitions <= 0:
        raise ValueError(f"partitions: must be a positive integer, got {args.partitions}")
    input_path = args.input_path or str(DEFAULT_EVAL_DATA)
    if not Path(input_path).is_file():
        raise ValueError(f"input_path: {input_path} does not exist")
    params = {k: v for k, v in vars(args).items() if k != "verbose"}
    with step_run(STEP, params), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions"
        metrics = run_batch(args.model_uri, input_path, out, args.spark_master, args.max_tokens, args.partitions)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), "predictions")
        print(f"scored {metrics['prompts']:.0f} prompts in {metrics['spark_seconds']:.1f} s "
              f"({metrics['spark_prompts_per_s']:.2f} prompts/s)")


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
