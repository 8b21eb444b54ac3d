"""The ``evaluate`` step's logic: the reference (the transformers flavour) and one or more ONNX models on the same
prompts; quality with 95% bootstrap intervals, speed and size side by side; the champion by non-inferiority.

Quality goes through ``mlflow.genai.evaluate`` with code scorers (:mod:`chatpack.evaluation.scorers`: one trace per
prompt), one nested run per model linked to its LoggedModel (``model_id``); the evaluate run itself holds the
comparison.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from chatpack.evaluation import champion, quality, report, sweep
from chatpack.evaluation.data import EvalRow
from chatpack.evaluation.intervals import mean_interval
from chatpack.evaluation.runner import FlavourRun, run_flavour
from chatpack.evaluation.scorers import genai_quality
from chatpack.tracking import MODEL_URI_TAG, StepInputError

logger = logging.getLogger(__name__)

FLAVOURS = ("transformers", "onnx")
REFERENCE = "transformers"
EVAL_DATA_TAG = "chatpack.eval_data_sha256"


@dataclass
class FlavourEval:
    name: str
    model_uri: str
    run: FlavourRun
    quality: dict[str, float] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    scores: list[float] = field(default_factory=list)  # row_score per prompt, in eval-set order

    @property
    def replies(self) -> list[str]:
        return [r.reply for r in self.run.rows]

    def summary(self) -> dict[str, float]:
        ci = mean_interval(self.scores)
        return {"quality_score": self.quality["row_score"], "quality_score_ci_low": ci.low,
                "quality_score_ci_high": ci.high, **{k: v for k, v in self.quality.items() if k != "row_score"},
                **self.speed, "model_size_mb": self.size_bytes / 1e6}

    def contender(self) -> champion.Contender:
        return champion.Contender(self.name, self.model_uri, self.quality["row_score"], self.speed["tokens_per_s"],
                                  tuple(self.scores))


def model_size_bytes(model_uri: str) -> int:
    return int(mlflow.models.Model.load(model_uri).model_size_bytes or 0)


def run_all(model_uris: dict[str, str], rows: list[EvalRow], max_new_tokens: int) -> dict[str, FlavourEval]:
    """Generate with each model (one fresh process each, one after the other)."""
    return {name: FlavourEval(name, uri, run_flavour(uri, rows, max_new_tokens, name))
            for name, uri in model_uris.items()}


def score_flavour(result: FlavourEval, rows: list[EvalRow]) -> None:
    """Quality via mlflow.genai.evaluate in a nested run linked to the model; speed and size beside it."""
    model_id = result.model_uri.removeprefix("models:/") if result.model_uri.startswith("models:/m-") else None
    with mlflow.start_run(run_name=f"evaluate-{result.name}", nested=True):
        mlflow.set_tags({"chatpack.step": "evaluate-flavour", "chatpack.flavour": result.name,
                         "chatpack.model_uri": result.model_uri})
        result.quality = genai_quality(rows, result.replies, model_id)
        result.scores = [float(quality.score_row(row, reply)["row_score"]) for row, reply in zip(rows, result.replies)]
        result.speed = result.run.speed()
        result.size_bytes = model_size_bytes(result.model_uri)
        ci = mean_interval(result.scores)
        mlflow.log_metrics({**result.speed, "model_size_mb": result.size_bytes / 1e6, "quality_score": ci.value,
                            "quality_score_ci_low": ci.low, "quality_score_ci_high": ci.high}, model_id=model_id)


def comparison_table(results: dict[str, FlavourEval], rows: list[EvalRow]) -> pd.DataFrame:
    """One row per prompt with every model's reply and score side by side."""
    table = pd.DataFrame({"id": [r.id for r in rows], "category": [r.category for r in rows],
                          "prompt": [r.messages[-1]["content"] for r in rows],
                          "reference": [r.reference for r in rows]})
    for name, result in results.items():
        table[f"{name}_reply"] = result.replies
        table[f"{name}_row_score"] = result.scores
        table[f"{name}_latency_s"] = [r.latency_s for r in result.run.rows]
        table[f"{name}_completion_tokens"] = [r.completion_tokens for r in result.run.rows]
    reference = results[REFERENCE].replies
    for name, result in results.items():
        if name != REFERENCE:
            column = "identical" if len(results) == 2 else f"{name}_identical"
            table[column] = [quality.normalize(x) == quality.normalize(y) for x, y in zip(reference, result.replies)]
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


def onnx_name(model_uri: str, index: int, count: int) -> str:
    """``onnx`` for a single ONNX model; in a sweep ``onnx_<recipe>`` from the fetch run behind the model (the
    LoggedModel's source run -> its ``fetch_run_id`` -> the tag ``chatpack.recipe``), else ``onnx_<n>``."""
    if count == 1:
        return "onnx"
    recipe = ""
    if model_uri.startswith("models:/m-"):
        source = mlflow.get_logged_model(model_uri.removeprefix("models:/")).source_run_id
        fetch_run_id = mlflow.get_run(source).data.params.get("fetch_run_id", "") if source else ""
        recipe = mlflow.get_run(fetch_run_id).data.tags.get("chatpack.recipe", "") if fetch_run_id else ""
    return "onnx_" + (re.sub(r"[^A-Za-z0-9]+", "_", recipe).strip("_") or str(index + 1))


def candidate_uris(uris: list[str]) -> dict[str, str]:
    """Name the ONNX models (see :func:`onnx_name`); a name met twice gets the model's position appended."""
    if len(set(uris)) != len(uris):
        raise StepInputError("onnx models: the same model is listed twice")
    named: dict[str, str] = {}
    for i, uri in enumerate(uris):
        name = onnx_name(uri, i, len(uris))
        named[name if name not in named else f"{name}_{i + 1}"] = uri
    return named


def evaluate_and_log(model_uris: dict[str, str], rows: list[EvalRow], eval_data: str, max_new_tokens: int,
                     quality_tolerance: float, registered_model_name: str) -> dict[str, Any]:
    """Run, score, compare, crown and log everything to the active run; return the summary. ``model_uris`` maps a
    name to a model: :data:`REFERENCE` is the reference, every other entry a candidate."""
    results = run_all(model_uris, rows, max_new_tokens)
    for result in results.values():
        score_flavour(result, rows)
    summaries = {name: r.summary() for name, r in results.items()}
    candidates = [r.contender() for name, r in results.items() if name != REFERENCE]
    decision = champion.choose_champion(results[REFERENCE].contender(), candidates, quality_tolerance)
    aliases = champion.register_and_alias(decision, registered_model_name) if registered_model_name else {}
    agreements = {c.name: quality.agreement(results[REFERENCE].replies, results[c.name].replies) for c in candidates}
    focus = decision.champion if decision.champion.name != REFERENCE else decision.challenger  # the ONNX in view

    metrics = {f"{name}_{key}": value for name, s in summaries.items() for key, value in s.items()}
    for name, verdict in decision.verdicts.items():
        metrics.update({f"{name}_quality_gap": verdict.gap.value, f"{name}_quality_gap_ci_low": verdict.gap.low,
                        f"{name}_quality_gap_ci_high": verdict.gap.high, f"{name}_speedup": verdict.speedup,
                        f"{name}_non_inferior": float(verdict.non_inferior)})
        metrics.update({f"{name}_{key}": value for key, value in agreements[name].items()})
    metrics.update(agreements[focus.name])
    mlflow.log_metrics(metrics)
    mlflow.set_tags({"chatpack.champion": decision.champion.name, "chatpack.champion_uri": decision.champion.model_uri,
                     "chatpack.champion_reason": decision.reason})
    mlflow.log_table(comparison_table(results, rows), "eval_rows.json")
    damage = {name: sweep.logged_damage(uri) for name, uri in model_uris.items() if name != REFERENCE}
    table = sweep.sweep_rows(summaries, damage, decision.verdicts, REFERENCE, decision.champion.name)
    markdown = (report.report_markdown(summaries, agreements, decision, aliases, registered_model_name, len(rows),
                                       eval_data, quality_tolerance)
                + "\n## Speed against damage\n\n" + sweep.sweep_markdown(table) + "\n")
    summary = {"summaries": summaries, "agreement": agreements[focus.name], "agreements": agreements,
               "champion": decision.champion.name, "champion_uri": decision.champion.model_uri,
               "reason": decision.reason, "aliases": aliases, "sweep": table,
               "verdicts": {n: {"gap": v.gap.value, "gap_ci": [v.gap.low, v.gap.high], "speedup": v.speedup,
                                "non_inferior": v.non_inferior} for n, v in decision.verdicts.items()}}
    mlflow.log_text(sweep.sweep_markdown(table) + "\n", "sweep.md")
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in (("comparison.png", lambda p: report.comparison_plot(summaries, p)),
                           ("pareto.png", lambda p: sweep.pareto_plot(table, p))):
            draw(Path(tmp) / name)
            mlflow.log_artifact(str(Path(tmp) / name))
    mlflow.log_text(markdown, "eval_report.md")
    mlflow.log_dict(summary, "eval_summary.json")
    logger.info("\n%s\nchampion: %s (%s)", report.summary_markdown(summaries), decision.champion.name,
                decision.reason)
    return summary
