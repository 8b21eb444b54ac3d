"""Offline quality metrics: exact match, contains-reference, ROUGE-L, rule checks, and agreement between flavours.

Nothing is downloaded: ROUGE-L comes from the ``rouge-score`` package, rules are plain Python.

Per-row score (what ``quality_score`` averages): rows with rules score the share of rules passed; ``rewrite`` and
``summarise`` rows score ROUGE-L F1 against the reference; all other rows score 1 if the reply contains the reference.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from typing import Any

from chatpack.eval_data import EvalRow

ROUGE_CATEGORIES = ("rewrite", "summarise", "summarize")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, squeeze whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


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


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text)


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text.strip().strip("`").removeprefix("json").strip()), dict)
    except ValueError:
        return False


RULES: dict[str, Callable[[str, Any], bool]] = {
    "max_words": lambda r, v: 0 < len(_words(r)) <= int(v),
    "min_words": lambda r, v: len(_words(r)) >= int(v),
    "contains": lambda r, v: str(v).lower() in r.lower(),
    "not_contains": lambda r, v: str(v).lower() not in r.lower(),
    "ends_with": lambda r, v: r.strip().endswith(str(v)),
    "starts_with": lambda r, v: r.strip().startswith(str(v)),
    "one_of": lambda r, v: normalize(r) in {normalize(x) for x in v},
    "uppercase": lambda r, v: any(c.isalpha() for c in r) and r.upper() == r,
    "lowercase": lambda r, v: any(c.isalpha() for c in r) and r.lower() == r,
    "comma_items": lambda r, v: len([x for x in r.strip().rstrip(".").split(",") if x.strip()]) == int(v),
    "bullet_count": lambda r, v: len([ln for ln in r.splitlines() if ln.strip().startswith(("- ", "* "))]) == int(v),
    "json_object": lambda r, v: _json_object(r),
    "regex": lambda r, v: re.search(str(v), r) is not None,
}


def rule_pass_rate(reply: str, rules: list[dict[str, Any]]) -> float | None:
    if not rules:
        return None
    return sum(RULES[rule["type"]](reply, rule.get("value")) for rule in rules) / len(rules)


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
