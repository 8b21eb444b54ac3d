"""The evaluation runner: a spread sample of rows timed one at a time, the rest answered in batches with the replies
they get alone."""

from __future__ import annotations

import pytest

from chatpack.evaluation import runner
from chatpack.evaluation.data import DEFAULT_EVAL_DATA, load_eval_rows, sample_rows
from steps import log_onnx_pyfunc, log_transformers
from tests.helpers import logged


def test_timed_sample_spreads_over_the_rows_and_keeps_both_ends():
    assert runner.timed_sample(5, 40) == [0, 1, 2, 3, 4]
    sample = runner.timed_sample(340, 40)
    assert len(sample) == 40 and sample[0] == 0 and sample[-1] == 339
    gaps = {b - a for a, b in zip(sample, sample[1:])}
    assert gaps <= {8, 9}


def test_an_eval_sample_takes_rows_from_every_category_in_file_order():
    rows = load_eval_rows(DEFAULT_EVAL_DATA)
    categories = list(dict.fromkeys(r.category for r in rows))
    sample = sample_rows(rows, 2 * len(categories))
    assert len(sample) == 2 * len(categories)
    assert {r.category for r in sample} == set(categories)  # every kind, even those with 3 rows in 340
    assert [r.id for r in sample] == [r.id for r in rows if r in sample]  # in the file's order
    assert sample_rows(rows, 2 * len(categories)) == sample  # the same rows every time
    assert sample_rows(rows, 0) == rows and sample_rows(rows, 10_000) == rows
    with pytest.raises(ValueError, match="eval_rows: must be >= 0"):
        sample_rows(rows, -1)


@pytest.mark.parametrize(("step", "how"), [(log_onnx_pyfunc, "threads"), (log_transformers, "pipeline")],
                         ids=["onnx", "transformers"])
def test_untimed_rows_are_batched_and_get_the_replies_they_get_alone(step, how, fixture_fetch_run, monkeypatch):
    import mlflow

    uri = logged(step, fixture_fetch_run, "--max_new_tokens", "8")
    assert runner.batching(uri)[0] == how
    monkeypatch.setattr(runner, "TIMED_ROWS", 3)
    rows = [{"id": r.id, "messages": r.messages, "max_tokens": 6 if i % 3 else 3}
            for i, r in enumerate(load_eval_rows(DEFAULT_EVAL_DATA)[:14])]
    result = runner._generate(uri, rows, "test")
    assert result["batching"] == how
    timed = [r for r in result["rows"] if r["latency_s"] is not None]
    assert len(timed) == 3 and all(r["ttft_s"] is not None and r["latency_s"] > 0 for r in timed)
    assert [r["id"] for r in result["rows"]] == [r["id"] for r in rows]  # in the rows' order
    model = mlflow.pyfunc.load_model(uri)
    alone = [model.predict({"messages": r["messages"], "max_tokens": r["max_tokens"]})[0] for r in rows]
    assert [r["reply"] for r in result["rows"]] == [a["choices"][0]["message"]["content"] for a in alone]
    counts = [(r["completion_tokens"], a["usage"]["completion_tokens"]) for r, a in zip(result["rows"], alone)]
    # Batched transformers replies are re-counted from their text (MLflow counts the batch's padding): a re-encoded
    # text may split differently (the fixture model emits arbitrary tokens), so close, not exact.
    assert all(abs(batched - solo) <= (2 if how == "pipeline" else 0) for batched, solo in counts), str(counts)
    assert abs(sum(b for b, _ in counts) - sum(s for _, s in counts)) <= 0.1 * sum(s for _, s in counts)
    speed = runner.FlavourRun(uri, [runner.RowResult(**r) for r in result["rows"]], 1.0, 1.0).speed()
    assert speed["timed_rows"] == 3 and speed["tokens_per_s"] > 0
