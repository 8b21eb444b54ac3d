"""Offline quality metrics: exact match, contains-reference, ROUGE-L, rule checks, and agreement between flavours.

Nothing is downloaded: ROUGE-L comes from the ``rouge-score`` package, rules are plain Python.

Per-row score (what ``quality_score`` averages): rows with rules score the share of rules passed; ``rewrite`` and
``summarise`` rows score ROUGE-L F1 against the reference; all other rows score 1 if the reply contains the reference.
"""

from __future__ import annotations

import re
from typing import Any

from chatpack.evaluation.data import EvalRow
from chatpack.evaluation.rules import normalize, rule_pass_rate

ROUGE_CATEGORIES = ("rewrite", "summarise", "summarize")


def exact_match(reply: str, reference: str) -> float:
    return float(normalize(reply) == normalize(reference))


def contains_reference(reply: str, reference: str) -> float:
    ref = normalize(reference)
    return float(bool(ref) and re.search(rf"\b{re.escape(ref)}\b", normalize(reply)) is not None)


_scorer = None


def rouge_l(reply: str, reference: str) -> float:
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_scorer.score(reference, reply)["rougeL"].fmeasure)


def score_row(row: EvalRow, reply: str) -> dict[str, Any]:
    """All per-row quality numbers for one reply."""
    scores: dict[str, Any] = {
        "exact_match": exact_match(reply, row.reference),
        "contains_reference": contains_reference(reply, row.reference),
        "rouge_l": rouge_l(reply, row.reference),
        "rule_pass": rule_pass_rate(reply, row.rules),
    }
    if scores["rule_pass"] is not None:
        scores["row_score"] = scores["rule_pass"]
    elif row.category in ROUGE_CATEGORIES:
        scores["row_score"] = scores["rouge_l"]
    else:
        scores["row_score"] = scores["contains_reference"]
    return scores


def agreement(replies_a: list[str], replies_b: list[str]) -> dict[str, float]:
    """How alike two flavours' greedy replies are: share identical (normalised) and mean ROUGE-L between them."""
    pairs = list(zip(replies_a, replies_b, strict=True))
    return {
        "agreement_identical": sum(normalize(a) == normalize(b) for a, b in pairs) / len(pairs),
        "agreement_rouge_l": sum(rouge_l(a, b) for a, b in pairs) / len(pairs),
    }
