"""The evaluation set format: one JSON object per line.

    {"id": "fact-01", "category": "factual", "messages": [{"role": "user", "content": "..."}],
     "reference": "Paris", "rules": [{"type": "max_words", "value": 1}]}

``id`` (unique), ``messages`` (an OpenAI chat conversation) and ``reference`` (the expected answer) are required;
``category`` (free text; ``instruction`` rows are scored by their rules, ``rewrite``/``summarise`` rows by ROUGE-L,
others by whether the reply contains the reference), ``rules`` (see :mod:`chatpack.evaluation.rules`) and
``max_tokens`` (this row's reply budget, capped by the evaluation's ``max_new_tokens``) are optional.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatpack.evaluation.rules import RULES
from chatpack.project import PROJECT_ROOT
from chatpack.protocol.chat_request import parse_request

DEFAULT_EVAL_DATA = PROJECT_ROOT / "data" / "eval_prompts.jsonl"


@dataclass(frozen=True)
class EvalRow:
    id: str
    category: str
    messages: list[dict[str, str]]
    reference: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int | None = None

    def budget(self, max_new_tokens: int) -> int:
        """This row's reply budget: its own ``max_tokens``, capped by the evaluation's ``max_new_tokens``."""
        return min(self.max_tokens, max_new_tokens) if self.max_tokens else max_new_tokens


def read_jsonl(path: str | Path, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` per non-blank line of a JSONL file; ``where`` (``<label>: <path>:<line>``) starts every
    error message about that line."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label}: {path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None


def load_eval_rows(path: str | Path) -> list[EvalRow]:
    """Read and validate a JSONL eval set; errors name the line and the field."""
    rows, seen = [], set()
    for where, obj in read_jsonl(path, "eval_data"):
        for key in ("id", "messages", "reference"):
            if key not in obj:
                raise ValueError(f"{where}: missing '{key}'")
        if obj["id"] in seen:
            raise ValueError(f"{where}: duplicate id '{obj['id']}'")
        seen.add(obj["id"])
        try:
            messages = parse_request({"messages": obj["messages"]}).messages or []
        except ValueError as exc:  # a RequestError naming the field
            raise ValueError(f"{where}: {exc}") from None
        rules = obj.get("rules", [])
        for rule in rules:
            if rule.get("type") not in RULES:
                raise ValueError(f"{where}: unknown rule type '{rule.get('type')}'; known: {', '.join(RULES)}")
        max_tokens = obj.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise ValueError(f"{where}: max_tokens must be a positive integer, got {max_tokens!r}")
        rows.append(EvalRow(str(obj["id"]), str(obj.get("category", "general")), messages, str(obj["reference"]),
                            rules, max_tokens))
    if not rows:
        raise ValueError(f"eval_data: {path} has no rows")
    return rows


def sample_rows(rows: list[EvalRow], n: int) -> list[EvalRow]:
    """The first ``n`` rows taken in turn from each category (in the order categories first appear), so a small
    sample still covers every kind of prompt; all rows when ``n`` is 0 or at least their number. Deterministic: the
    same file and ``n`` give the same rows."""
    if n < 0:
        raise ValueError(f"eval_rows: must be >= 0 (0 = every row), got {n}")
    if n == 0 or n >= len(rows):
        return rows
    by_category: dict[str, list[EvalRow]] = {}
    for row in rows:
        by_category.setdefault(row.category, []).append(row)
    queues, picked = [list(reversed(group)) for group in by_category.values()], []
    while len(picked) < n:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    order = {id(row): i for i, row in enumerate(rows)}
    return sorted(picked, key=lambda row: order[id(row)])
