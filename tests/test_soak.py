"""The soak script: its request mix and verdicts, and a short live run against `serve` on the fixture model."""

from __future__ import annotations

import json

import pytest

from benchmarks import soak
from steps import log_onnx_pyfunc
from tests.helpers import logged


def test_the_mix_is_half_streamed_with_every_tenth_stream_cancelled():
    plans = [soak.request_plan(i, 10) for i in range(1000)]
    assert sum(p["body"]["stream"] for p in plans) == 500
    assert sum(p["cancel"] for p in plans) == 50
    assert all(p["body"]["stream"] for p in plans if p["cancel"])
    assert len({p["body"]["messages"][0]["content"] for p in plans}) == 1000  # no two prompts alike


def test_verdicts_flag_failures_memory_growth_and_leaks():
    phase = {"failures": 0}
    calm = {"after warm-up": {"rss_mb": 400, "threads": 20, "fds": 18},
            "end (idle)": {"rss_mb": 420, "threads": 20, "fds": 18}}
    assert all(ok for ok, _ in soak.checks([phase], calm, 425).values())
    leaky = {**calm, "end (idle)": {"rss_mb": 460, "threads": 70, "fds": 60}}
    verdicts = soak.checks([{"failures": 2}], leaky, 470)
    assert not any(ok for ok, _ in verdicts.values())


@pytest.mark.e2e
def test_a_short_soak_against_serve_passes(fixture_fetch_run, tmp_path):
    uri = logged(log_onnx_pyfunc, fixture_fetch_run, "--max_new_tokens", "16")
    soak.main(["--model_uri", uri, "--requests", "40", "--clients", "4", "--warmup", "32", "--out", str(tmp_path)])
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("soak-*.json")]
    # 40 requests say nothing about memory growth (the 1,000-request run does); failures and leaks they do show.
    verdicts = {name: ok for name, (ok, _) in result["checks"].items()}
    assert verdicts["no failures"] and verdicts["no leaked threads"] and verdicts["no leaked open files"], verdicts
    assert verdicts["every request traced"], result["checks"]
    assert sum(p["requests"] for p in result["phases"]) == 40
    assert result["server_metrics"]["requests_total"] == result["server_metrics"]["requests_sent"]
