"""Quality through MLflow 3's GenAI evaluation: ``mlflow.genai.evaluate`` on the precomputed replies with code scorers
(offline: no judge model, nothing downloaded), one trace per prompt, results linked to the model's LoggedModel.

The scorers wrap :mod:`chatpack.evaluation.quality`, so a row scores the same here as everywhere else. Each row's
reference is its expectation ``reference``; the row itself (category, rules) travels as the expectation ``row``.
Metrics come out as ``<scorer>/mean`` (``row_score/mean`` is the quality score) on the active run and the LoggedModel.
Every assessment is one write to the tracking store (with a sqlite store each is a commit: ~20 ms here, next to
~0.2 s for the trace itself), so the scorers are the three the champion rule and the report need; exact match and
ROUGE-L are computed beside them (:func:`local_quality`) and logged under the same ``<name>/mean`` names.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import mlflow
from mlflow.genai.scorers import scorer

from chatpack.evaluation import quality
from chatpack.evaluation.data import EvalRow
from chatpack.evaluation.rules import rule_pass_rate

logger = logging.getLogger(__name__)

# Scoring runs after the timed generation (in other processes), so its threads skew no speed figure; two keep the
# trace writes of a few hundred rows short without crowding a small machine.
WORKERS_ENV = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
DEFAULT_WORKERS = "2"


def _row(expectations: dict[str, Any]) -> EvalRow:
    return EvalRow(**json.loads(expectations["row"]))


@scorer
def row_score(outputs: str, expectations: dict[str, Any]) -> float:
    """The row's quality score: rules passed, ROUGE-L for rewrite/summarise rows, else contains-the-reference."""
    return float(quality.score_row(_row(expectations), outputs)["row_score"])


@scorer
def contains_reference(outputs: str, expectations: dict[str, Any]) -> float:
    return quality.contains_reference(outputs, expectations["reference"])


@scorer
def rule_pass(outputs: str, expectations: dict[str, Any]) -> float | None:
    """Share of the row's rules passed; rows without rules give no value (left out of the mean)."""
    return rule_pass_rate(outputs, _row(expectations).rules)


SCORERS = [row_score, contains_reference, rule_pass]
LOCAL_METRICS = ("exact_match", "rouge_l")
QUALITY_METRICS = (*(s.name for s in SCORERS), *LOCAL_METRICS)


def eval_data(rows: list[EvalRow], replies: list[str]) -> list[dict[str, Any]]:
    """``mlflow.genai.evaluate``'s data: the conversation as inputs, the reply as outputs, reference and row as
    expectations."""
    return [{"inputs": {"messages": row.messages}, "outputs": reply,
             "expectations": {"reference": row.reference, "row": json.dumps(row.__dict__)},
             "tags": {"chatpack.row_id": row.id, "chatpack.category": row.category}}
            for row, reply in zip(rows, replies, strict=True)]


def local_quality(rows: list[EvalRow], replies: list[str]) -> dict[str, float]:
    """Mean exact match and ROUGE-L against the references."""
    pairs = list(zip(replies, (r.reference for r in rows), strict=True))
    return {"exact_match": sum(quality.exact_match(a, b) for a, b in pairs) / len(pairs),
            "rouge_l": sum(quality.rouge_l(a, b) for a, b in pairs) / len(pairs)}


def genai_quality(rows: list[EvalRow], replies: list[str], model_id: str | None) -> dict[str, float]:
    """Score the replies with ``mlflow.genai.evaluate`` under the active run, linked to ``model_id`` (plus the local
    metrics, logged alike); return every quality metric's mean by name."""
    os.environ.setdefault(WORKERS_ENV, DEFAULT_WORKERS)
    result = mlflow.genai.evaluate(data=eval_data(rows, replies), scorers=SCORERS, model_id=model_id)
    means = {s.name: float(result.metrics.get(f"{s.name}/mean", float("nan"))) for s in SCORERS}
    local = local_quality(rows, replies)
    mlflow.log_metrics({f"{name}/mean": value for name, value in local.items()}, model_id=model_id)
    return {**means, **local}
