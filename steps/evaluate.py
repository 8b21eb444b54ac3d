"""Entry point ``evaluate``: the transformers model and one or more ONNX models on the same prompts; quality, speed,
size and damage side by side; the champion by non-inferiority.

Inputs (MLproject params, same names as the flags):
  transformers_model_uri / transformers_run_id   the transformers model, or the log_transformers run that logged it
  onnx_model_uri / onnx_run_id                   the ONNX pyfunc, or the log_onnx_pyfunc run that logged it
  onnx_model_uris / onnx_run_ids                 several ONNX models (a sweep), comma-separated; may be combined
                                                 with the single ones. With several, each is named
                                                 ``onnx_<recipe>`` in metrics and tables
  eval_data              JSONL eval set (default: data/eval_prompts.jsonl; format in chatpack/evaluation/data.py)
  max_new_tokens         reply budget per prompt (greedy decoding; a row's own max_tokens may lower it)
  eval_rows              evaluate only this many rows, taken in turn from each category (0 = every row): what keeps a
                         3.8B model's transformers reference on a CPU within a stated time (docs/steps/evaluate.md)
  registered_model_name  register champion and challenger and set those aliases (empty = no registry)
  quality_tolerance      non-inferiority margin: the ONNX model qualifies when the upper end of the 95% paired-bootstrap
                         interval of (transformers quality - ONNX quality) is at most this (0-1)

Outputs, on the MLflow run (tag ``chatpack.step=evaluate``):
  nested runs ``evaluate-transformers`` / ``evaluate-onnx`` with ``mlflow.genai.evaluate`` results (code scorers,
  one trace per prompt) linked to each
  model; metrics ``<flavour>_<metric>`` (quality with ``_ci_low``/``_ci_high``), ``agreement_identical``,
  ``agreement_rouge_l``, ``onnx_speedup``, ``onnx_quality_gap`` (with its interval), ``onnx_non_inferior``; artifacts
  ``eval_rows.json`` (per-prompt table), ``comparison.png``, ``eval_report.md``, ``eval_summary.json``, ``sweep.md``
  and ``pareto.png`` (speed vs damage: size, decode tokens/s, PPL, KL divergence, top-1, quality per model); tags
  ``chatpack.champion``, ``chatpack.champion_uri``, ``chatpack.champion_reason``, ``chatpack.eval_data_sha256``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from chatpack.evaluation.data import DEFAULT_EVAL_DATA, load_eval_rows, sample_rows
from chatpack.evaluation.evaluate import EVAL_DATA_TAG, candidate_uris, evaluate_and_log, resolve_model_uri
from chatpack.sources.resolve import sha256_file
from chatpack.tracking import StepInputError, step_run
from steps import common

STEP = "evaluate"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transformers_model_uri", default="", help="URI of the transformers model (models:/m-...).")
    p.add_argument("--transformers_run_id", default="", help="Or: the log_transformers run that logged it.")
    p.add_argument("--onnx_model_uri", default="", help="URI of the ONNX pyfunc model (models:/m-...).")
    p.add_argument("--onnx_run_id", default="", help="Or: the log_onnx_pyfunc run that logged it.")
    p.add_argument("--onnx_model_uris", default="", help="Several ONNX models (a sweep): comma-separated URIs.")
    p.add_argument("--onnx_run_ids", default="", help="Or: their log_onnx_pyfunc runs, comma-separated.")
    p.add_argument("--eval_data", default="", help=f"JSONL eval set; empty = {DEFAULT_EVAL_DATA.name} shipped here.")
    p.add_argument("--max_new_tokens", type=int, default=64, help="Reply budget per prompt.")
    p.add_argument("--eval_rows", type=int, default=0,
                   help="Evaluate only this many rows, taken in turn from each category; 0 = every row.")
    p.add_argument("--registered_model_name", default="", help="Register both and set aliases; empty = no registry.")
    p.add_argument("--quality_tolerance", type=float, default=0.05,
                   help="Max quality-score deficit (0-1) the faster flavour may have and still be champion.")
    common.add_verbose(p)
    return p.parse_args(argv)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def onnx_uris(args: argparse.Namespace) -> list[str]:
    """Every ONNX model asked for, single and listed, in that order; at least one."""
    uris = [resolve_model_uri(args.onnx_model_uri, args.onnx_run_id, "onnx")] if (args.onnx_model_uri
                                                                                   or args.onnx_run_id) else []
    uris += _split(args.onnx_model_uris)
    uris += [resolve_model_uri("", run_id, "onnx") for run_id in _split(args.onnx_run_ids)]
    if not uris:
        raise StepInputError("onnx_model_uri: required (or onnx_run_id, or several as onnx_model_uris/onnx_run_ids)")
    return uris


def _run(args: argparse.Namespace) -> None:
    if args.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: must be a positive integer, got {args.max_new_tokens}")
    if args.quality_tolerance < 0:
        raise ValueError(f"quality_tolerance: must be >= 0, got {args.quality_tolerance}")
    uris = {"transformers": resolve_model_uri(args.transformers_model_uri, args.transformers_run_id, "transformers"),
            **candidate_uris(onnx_uris(args))}
    eval_data = args.eval_data or str(DEFAULT_EVAL_DATA)
    rows = sample_rows(load_eval_rows(eval_data), args.eval_rows)
    params = {k: v for k, v in vars(args).items() if k != "verbose"}
    with step_run(STEP, params):
        mlflow.set_tag(EVAL_DATA_TAG, sha256_file(Path(eval_data)))
        evaluate_and_log(uris, rows, eval_data, args.max_new_tokens, args.quality_tolerance,
                         args.registered_model_name)


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv, (ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
