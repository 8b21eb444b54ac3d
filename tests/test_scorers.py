"""The code scorers of the GenAI evaluation score a row exactly as the rest of the evaluation does."""

from __future__ import annotations

import pytest

from chatpack.evaluation.data import DEFAULT_EVAL_DATA, load_eval_rows
from chatpack.evaluation.quality import score_row
from chatpack.evaluation.scorers import SCORERS, eval_data, local_quality


@pytest.mark.parametrize("reply_kind", ["reference", "wrong"])
def test_scorers_agree_with_score_row(reply_kind):
    rows = load_eval_rows(DEFAULT_EVAL_DATA)[::17]
    replies = [r.reference if reply_kind == "reference" else "I am not sure." for r in rows]
    for row, item in zip(rows, eval_data(rows, replies)):
        expected = score_row(row, item["outputs"])
        got = {s.name: s(outputs=item["outputs"], expectations=item["expectations"]) for s in SCORERS}
        assert got["row_score"] == pytest.approx(expected["row_score"]), row.id
        assert got["rule_pass"] == expected["rule_pass"]
        assert got["contains_reference"] == expected["contains_reference"]
        assert item["inputs"] == {"messages": row.messages} and item["tags"]["chatpack.row_id"] == row.id


def test_local_metrics_are_means_of_the_row_metrics():
    rows = load_eval_rows(DEFAULT_EVAL_DATA)[:20]
    replies = [r.reference if i % 2 else "no" for i, r in enumerate(rows)]
    means = local_quality(rows, replies)
    exact = [score_row(r, a)["exact_match"] for r, a in zip(rows, replies)]
    assert means["exact_match"] == pytest.approx(sum(exact) / 20)
    assert 0 < means["rouge_l"] < 1
