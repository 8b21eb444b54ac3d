"""Rule checks on a reply (``max_words``, ``json_object``, ...): what an eval row's ``rules`` may name."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from typing import Any


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, squeeze whitespace (SQuAD-style)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())



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
