"""The damage report: the shipped corpus, its windows, and the teacher-forced comparison of each ONNX build with the
transformers model (fixture builds by default, the bundled model under ``-m bundled``)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from chatpack.evaluation.corpus import DEFAULT_CORPUS, GENRES, Document, corpus_tokens, cut_windows, load_corpus
from chatpack.evaluation.damage import DamageSettings
from chatpack.sources.fetch import fetched_model
from steps import log_onnx_pyfunc
from tests.conftest import FIXTURE_MODEL, run_fetch

KEYS = ("damage_ppl_reference", "damage_ppl_onnx", "damage_kld_mean", "damage_kld_p99", "damage_kld_max",
        "damage_top1_agreement", "damage_tokens")


def encode_chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_shipped_corpus_has_every_genre_a_source_and_enough_text():
    docs = load_corpus()
    assert {d.genre for d in docs} == set(GENRES)
    assert all(d.source for d in docs)
    words = sum(len(d.text.split()) for d in docs)
    assert 12_000 <= words <= 40_000, words  # 20k-50k tokens for subword tokenizers (the bundled one: test below)


def test_windows_interleave_genres_and_stop_at_the_budget():
    docs = [Document("p", "prose", "s", "a" * 100), Document("c", "code", "s", "b" * 100),
            Document("d", "dialogue", "s", "c" * 100)]
    windows = cut_windows(docs, encode_chars, window=32, budget=0)
    assert [w.genre for w in windows[:6]] == ["prose", "code", "dialogue"] * 2
    assert all(16 <= len(w.ids) <= 32 for w in windows)  # 100 = 32 + 32 + 32 + 4: the 4-token tail is dropped
    taken = cut_windows(docs, encode_chars, window=32, budget=80)
    assert sum(w.scored for w in taken) == 80 and [w.genre for w in taken] == ["prose", "code", "dialogue"]
    with pytest.raises(ValueError, match="window: 4 tokens is too short"):
        cut_windows(docs, encode_chars, window=4, budget=0)


def test_bad_corpus_is_refused_naming_the_line_and_field(tmp_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"id": "a", "genre": "prose", "source": "me", "text": "x"}\n{"id": "b", "genre": "poetry", '
                   '"source": "me", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: genre 'poetry' is not one of prose, code, dialogue"):
        load_corpus(bad)
    bad.write_text('{"id": "a", "genre": "prose", "text": "x"}\n')
    with pytest.raises(ValueError, match=r":1: 'source' must be a non-empty string"):
        load_corpus(bad)
    with pytest.raises(ValueError, match="damage_tokens: must be >= 0"):
        DamageSettings(tokens=-1).check()


def damage_of(fetch_run_id: str) -> dict[str, float]:
    return {k: v for k, v in MlflowClient().get_run(fetch_run_id).data.metrics.items() if k.startswith("damage_")}


def test_fixture_fetch_logs_the_damage_report(fixture_fetch_run):
    m = damage_of(fixture_fetch_run)
    assert set(KEYS) <= set(m), sorted(m)
    assert m["damage_ppl_reference"] > 1 and m["damage_ppl_onnx"] > 1
    assert 0 <= m["damage_kld_mean"] <= m["damage_kld_p99"] <= m["damage_kld_max"]
    assert 0 <= m["damage_top1_agreement"] <= 1
    assert m["damage_tokens"] == DamageSettings().tokens
    assert {f"damage_kld_mean_{g}" for g in GENRES} <= set(m)
    report = json.loads(open(mlflow.artifacts.download_artifacts(run_id=fixture_fetch_run,
                                                                   artifact_path="damage_report.json")).read())
    assert report["corpus"] == DEFAULT_CORPUS.name and report["settings"]["tokens"] == DamageSettings().tokens
    assert fetched_model(fixture_fetch_run).info["damage"]["metrics"]["damage_kld_mean"] == m["damage_kld_mean"]


def test_an_fp32_build_matches_its_reference_and_int4_does_not(fixture_fetch_run):
    """The check that the comparison itself is right: the fp32 ONNX form is the same function as the transformers
    model, so its KL divergence is ~0 and it agrees on every top-1 token; the int4 build is measurably off."""
    fp32 = damage_of(run_fetch("--model", FIXTURE_MODEL, "--precision", "fp32", "--damage_tokens", "1024"))
    assert fp32["damage_kld_mean"] < 1e-4 and fp32["damage_kld_p99"] < 1e-3, fp32
    assert fp32["damage_top1_agreement"] > 0.99
    assert fp32["damage_ppl_onnx"] == pytest.approx(fp32["damage_ppl_reference"], rel=1e-3)
    int4 = damage_of(fixture_fetch_run)
    assert int4["damage_kld_mean"] > 100 * max(fp32["damage_kld_mean"], 1e-7)


def test_repeated_fetch_reuses_the_report_and_damage_false_skips_it(fixture_fetch_run):
    again = damage_of(run_fetch("--model", FIXTURE_MODEL))
    assert again["damage_cache_hit"] == 1.0
    assert again["damage_kld_mean"] == damage_of(fixture_fetch_run)["damage_kld_mean"]
    assert damage_of(run_fetch("--model", FIXTURE_MODEL, "--damage", "false")) == {}


def test_the_onnx_logged_model_carries_the_damage_metrics_and_ranks_by_them(fixture_fetch_run):
    assert log_onnx_pyfunc.main(["--fetch_run_id", fixture_fetch_run, "--model_name", "damage-onnx"]) == 0
    model_id = MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    model_id = model_id.removeprefix("models:/")
    linked = {m.key: m.value for m in mlflow.get_logged_model(model_id).metrics}
    assert linked["damage_kld_mean"] == damage_of(fixture_fetch_run)["damage_kld_mean"]
    ranked = mlflow.search_logged_models(filter_string="metrics.damage_kld_mean >= 0",
                                         order_by=[{"field_name": "metrics.damage_kld_mean", "ascending": True}],
                                         output_format="list")
    assert model_id in [m.model_id for m in ranked]


@pytest.mark.bundled
def test_bundled_model_damage_report(bundled_fetch_run):
    m = damage_of(bundled_fetch_run)
    assert 5 < m["damage_ppl_reference"] < 100  # a real model on real text
    assert m["damage_ppl_onnx"] > m["damage_ppl_reference"]  # int4 costs something...
    assert 0.01 < m["damage_kld_mean"] < 2 and 0.3 < m["damage_top1_agreement"] < 1  # ...but it is the same model
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(fetched_model(bundled_fetch_run).hf_dir)
    counts = corpus_tokens(load_corpus(), lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])
    assert 20_000 <= counts["total"] <= 50_000, counts
    assert all(counts[g] >= 4_000 for g in GENRES), counts
