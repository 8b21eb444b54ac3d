"""The ``evaluate`` step's logic: both flavours on the same prompts; quality, speed and size side by side.

Quality metrics go through ``mlflow.models.evaluate`` (static predictions, custom metrics), one nested run per
flavour linked to its LoggedModel (``model_id``); the evaluate run itself holds the comparison.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.metrics import MetricValue
from mlflow.models import make_metric

from chatpack.evaluation import champion, quality, report
from chatpack.evaluation.data import EvalRow
from chatpack.evaluation.runner import FlavourRun, run_flavour
from chatpack.tracking import MODEL_URI_TAG, StepInputError

logger = logging.getLogger(__name__)

FLAVOURS = ("transformers", "onnx")
EVAL_DATA_TAG = "chatpack.eval_data_sha256"
QUALITY_METRICS = ("row_score", "exact_match", "contains_reference", "rouge_l", "rule_pass")


@dataclass
class FlavourEval:
    name: str
    model_uri: str
    run: FlavourRun
    quality: dict[str, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    row_scores: pd.DataFrame | None = None

    @property
    def replies(self) -> list[str]:
        return [r.reply for r in self.run.rows]

    def summary(self) -> dict[str, float]:
        return {"quality_score": self.quality["row_score"], **{k: v for k, v in self.quality.items()
                                                                if k != "row_score"},
                **self.speed, "model_size_mb": self.size_bytes / 1e6}


def _aggregate(scores: list[float | None]) -> MetricValue:
    present = [s for s in scores if s is not None]
    return MetricValue(scores=scores, aggregate_results={"mean": sum(present) / len(present) if present else 0.0})


def _metrics() -> list:
    """Custom metrics for mlflow.models.evaluate; extra arguments are eval-data columns, passed by name."""

    def exact_match(predictions, targets, metrics):
        return _aggregate([quality.exact_match(p, t) for p, t in zip(predictions, targets)])

    def contains_reference(predictions, targets, metrics):
        return _aggregate([quality.contains_reference(p, t) for p, t in zip(predictions, targets)])

    def rouge_l(predictions, targets, metrics):
        return _aggregate([quality.rouge_l(p, t) for p, t in zip(predictions, targets)])

    def rule_pass(predictions, targets, metrics, rules):
        return _aggregate([quality.rule_pass_rate(p, json.loads(r)) for p, r in zip(predictions, rules)])

    def row_score(predictions, targets, metrics, row_json):
        rows = [EvalRow(**json.loads(r)) for r in row_json]
        return _aggregate([quality.score_row(row, p)["row_score"] for row, p in zip(rows, predictions)])

    fns = (row_score, exact_match, contains_reference, rouge_l, rule_pass)
    return [make_metric(eval_fn=fn, greater_is_better=True, name=fn.__name__) for fn in fns]


def eval_frame(rows: list[EvalRow], replies: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [r.id for r in rows],
        "category": [r.category for r in rows],
        "inputs": [r.messages[-1]["content"] for r in rows],
        "prediction": replies,
        "reference": [r.reference for r in rows],
        "rules": [json.dumps(r.rules) for r in rows],
        "row_json": [json.dumps(r.__dict__) for r in rows],
    })


def model_size_bytes(model_uri: str) -> int:
    return int(mlflow.models.Model.load(model_uri).model_size_bytes or 0)


def run_both(model_uris: dict[str, str], rows: list[EvalRow], max_new_tokens: int) -> dict[str, FlavourEval]:
    """Generate with each flavour (one fresh process each, one after the other)."""
    return {name: FlavourEval(name, uri, run_flavour(uri, rows, max_new_tokens, name))
            for name, uri in model_uris.items()}


def score_flavour(result: FlavourEval, rows: list[EvalRow]) -> None:
    """Quality via mlflow.models.evaluate in a nested run linked to the model; speed and size beside it."""
    model_id = result.model_uri.removeprefix("models:/") if result.model_uri.startswith("models:/m-") else None
    with mlflow.start_run(run_name=f"evaluate-{result.name}", nested=True):
        mlflow.set_tags({"chatpack.step": "evaluate-flavour", "chatpack.flavour": result.name,
                         "chatpack.model_uri": result.model_uri})
        evaluation = mlflow.models.evaluate(data=eval_frame(rows, result.replies), predictions="prediction",
                                            targets="reference", extra_metrics=_metrics(), evaluators="default",
                                            model_id=model_id)
        result.quality = {name: float(evaluation.metrics[f"{name}/mean"]) for name in QUALITY_METRICS}
        result.row_scores = evaluation.tables["eval_results_table"]
        result.speed = result.run.speed()
        result.size_bytes = model_size_bytes(result.model_uri)
        mlflow.log_metrics({**result.speed, "model_size_mb": result.size_bytes / 1e6}, model_id=model_id)


def comparison_table(results: dict[str, FlavourEval], rows: list[EvalRow]) -> pd.DataFrame:
    """One row per prompt with both replies and their scores side by side."""
    table = pd.DataFrame({"id": [r.id for r in rows], "category": [r.category for r in rows],
                          "prompt": [r.messages[-1]["content"] for r in rows],
                          "reference": [r.reference for r in rows]})
    for name, result in results.items():
        table[f"{name}_reply"] = result.replies
        table[f"{name}_row_score"] = list(result.row_scores["row_score/score"])
        table[f"{name}_latency_s"] = [r.latency_s for r in result.run.rows]
        table[f"{name}_completion_tokens"] = [r.completion_tokens for r in result.run.rows]
    names = list(results)
    if len(names) == 2:
        a, b = (results[n].replies for n in names)
        table["identical"] = [quality.normalize(x) == quality.normalize(y) for x, y in zip(a, b)]
    return table


def resolve_model_uri(uri: str, run_id: str, param: str) -> str:
    """A model URI given directly, or read from the ``chatpack.model_uri`` tag of the run that logged it."""
    if uri and run_id:
        raise StepInputError(f"{param}_model_uri/{param}_run_id: give one of them, not both")
    if uri:
        return uri
    if not run_id:
        raise StepInputError(f"{param}_model_uri: required (or {param}_run_id, the run that logged the model)")
    tags = mlflow.get_run(run_id).data.tags
    if MODEL_URI_TAG not in tags:
        raise StepInputError(f"{param}_run_id: run {run_id} has no '{MODEL_URI_TAG}' tag (not a model-logging run)")
    return tags[MODEL_URI_TAG]


def evaluate_and_log(model_uris: dict[str, str], rows: list[EvalRow], eval_data: str, max_new_tokens: int,
                     quality_tolerance: float, registered_model_name: str) -> dict[str, Any]:
    """Run, score, compare, crown and log everything to the active run; return the summary."""
    results = run_both(model_uris, rows, max_new_tokens)
    for result in results.values():
        score_flavour(result, rows)
    summaries = {name: r.summary() for name, r in results.items()}
    agree = quality.agreement(results["transformers"].replies, results["onnx"].replies)
    contenders = [champion.Contender(name, r.model_uri, summaries[name]["quality_score"],
                                     summaries[name]["tokens_per_s"]) for name, r in results.items()]
    decision = champion.choose_champion(*contenders, quality_tolerance=quality_tolerance)
    aliases = champion.register_and_alias(decision, registered_model_name) if registered_model_name else {}

    mlflow.log_metrics({f"{name}_{key}": value for name, s in summaries.items() for key, value in s.items()})
    mlflow.log_metrics(agree)
    mlflow.log_metric("onnx_speedup", summaries["onnx"]["tokens_per_s"] / summaries["transformers"]["tokens_per_s"])
    mlflow.set_tags({"chatpack.champion": decision.champion.name, "chatpack.champion_uri": decision.champion.model_uri,
                     "chatpack.champion_reason": decision.reason})
    mlflow.log_table(comparison_table(results, rows), "eval_rows.json")
    markdown = report.report_markdown(summaries, agree, decision, aliases, registered_model_name, len(rows), eval_data)
    summary = {"summaries": summaries, "agreement": agree, "champion": decision.champion.name,
               "champion_uri": decision.champion.model_uri, "reason": decision.reason, "aliases": aliases}
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "comparison.png"
        report.comparison_plot(summaries, plot)
        mlflow.log_artifact(str(plot))
    mlflow.log_text(markdown, "eval_report.md")
    mlflow.log_dict(summary, "eval_summary.json")
    print(report.summary_markdown(summaries))
    print(f"\nchampion: {decision.champion.name} ({decision.reason})")
    return summary
