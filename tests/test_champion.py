"""The non-inferiority champion rule, its bootstrap intervals, and the generated half of the shipped eval set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatpack.evaluation.champion import Contender, choose_champion
from chatpack.evaluation.data import DEFAULT_EVAL_DATA, load_eval_rows
from chatpack.evaluation.generated import GENERATORS, PER_KIND, generate_rows, render
from chatpack.evaluation.intervals import mean_interval, paired_gap_interval
from chatpack.evaluation.quality import score_row


def scores(n_right: int, n: int = 400) -> tuple[float, ...]:
    return tuple([1.0] * n_right + [0.0] * (n - n_right))


def test_intervals_cover_the_mean_and_are_seeded():
    ci = mean_interval(scores(200))
    assert ci.low < 0.5 < ci.high and ci.value == 0.5 and 0.03 < ci.half_width < 0.07
    assert mean_interval(scores(200)) == ci
    same = paired_gap_interval(scores(300), scores(300))
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    ref = rng.random(400) < 0.6
    cand = ref.copy()
    cand[rng.choice(400, 20, replace=False)] ^= True  # 5% of prompts flip: a small, paired difference
    gap = paired_gap_interval(ref.astype(float), cand.astype(float))
    assert gap.low <= gap.value <= gap.high and gap.half_width < 0.025  # pairing keeps it narrow
    with pytest.raises(ValueError, match="differ in length"):
        paired_gap_interval([1.0], [1.0, 0.0])


REF = Contender("transformers", "models:/m-ref", 0.5, tokens_per_s=30.0, scores=scores(200))


def test_the_fastest_non_inferior_candidate_wins():
    close = Contender("int8", "models:/m-a", 0.495, 60.0, scores(198))
    faster_close = Contender("int4", "models:/m-b", 0.49, 90.0, scores(196))
    decision = choose_champion(REF, [close, faster_close], quality_tolerance=0.05)
    assert decision.champion.name == "int4" and decision.challenger.name == "transformers"
    assert "3.00x faster" in decision.reason and "non-inferior" in decision.reason
    assert decision.verdicts["int8"].non_inferior and decision.verdicts["int4"].non_inferior


def test_a_faster_candidate_that_may_be_worse_than_the_tolerance_loses():
    worse = Contender("int4", "models:/m-b", 0.45, 90.0, scores(180))  # gap 0.05: upper end above 0.05
    decision = choose_champion(REF, [worse], quality_tolerance=0.05)
    assert decision.champion.name == "transformers" and decision.challenger.name == "int4"
    verdict = decision.verdicts["int4"]
    assert not verdict.non_inferior and verdict.gap.high > 0.05
    assert "closest, int4" in decision.reason and f"by {verdict.gap.high - 0.05:.3f}" in decision.reason


def test_a_better_candidate_is_non_inferior_even_at_zero_tolerance_and_a_slower_one_does_not_win():
    better = Contender("onnx", "models:/m-c", 0.6, 90.0, scores(240))
    assert choose_champion(REF, [better], quality_tolerance=0.0).champion.name == "onnx"
    slower = Contender("onnx", "models:/m-c", 0.5, 20.0, scores(200))
    decision = choose_champion(REF, [slower], quality_tolerance=0.05)
    assert decision.champion.name == "transformers" and "not faster" in decision.reason
    with pytest.raises(ValueError, match="quality_tolerance: must be >= 0"):
        choose_champion(REF, [slower], quality_tolerance=-0.1)


def test_generated_rows_are_deterministic_verifiable_and_shipped():
    rows = generate_rows()
    assert rows == generate_rows() and len(rows) == len(GENERATORS) * PER_KIND >= 300
    assert DEFAULT_EVAL_DATA.read_text() == render(), "run python -m chatpack.evaluation.generated"
    shipped = load_eval_rows(DEFAULT_EVAL_DATA)
    assert len(shipped) >= 340 and len({r.id for r in shipped}) == len(shipped)
    generated = [r for r in shipped if r.id.startswith("gen-")]
    assert {r.category for r in generated} == set(GENERATORS)
    assert all(r.max_tokens and score_row(r, r.reference)["row_score"] == 1.0 for r in generated)
    wrong = {"arithmetic": "It is 99999.", "conversion": "0", "extraction": "I do not know.",
             "formatting": "no"}
    assert all(score_row(r, wrong[r.category])["row_score"] < 1.0 for r in generated)
    assert all(json.dumps(r.messages) for r in generated)


def test_a_row_budget_caps_the_reply_and_bad_budgets_are_refused(tmp_path):
    row = next(r for r in load_eval_rows(DEFAULT_EVAL_DATA) if r.max_tokens)
    assert row.budget(64) == row.max_tokens and row.budget(4) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}], "reference": "x", "max_tokens": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: max_tokens must be a positive integer"):
        load_eval_rows(bad)
