"""The benchmarks' table builder, statistics, client parsing and failure counting, on small hand-made results (the
benchmarks themselves are not run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_decode, bench_serve, report
from benchmarks.client import Reply, parse_stream, parse_whole
from benchmarks.common import percentile, spread

ROOT = Path(__file__).resolve().parent.parent


def _machine() -> dict:
    return {"date": "2026-01-02T03:04:05+00:00", "cpu_model": "Test CPU", "physical_cores": 2, "logical_cpus": 2,
            "memory_gib": 24.0, "libraries": {"onnxruntime-genai": "0.18.0", "llama-server": "1234 (abc)"},
            "threads": 2, "git_commit": "abc1234", "loadavg_per_round": [[1.5, 1, 1], [2.5, 1, 1], [0.5, 1, 1]]}


def _decode_round(decode, ttft, e2e, latency, tokens=64.0, ttft_long=None):
    return {"decode_tokens_per_s": decode, "ttft_s": ttft, "ttft_long_s": ttft_long, "e2e_tokens_per_s": e2e,
            "latency_s": latency, "reply_tokens": tokens}


DECODE = {
    "benchmark": "decode",
    "machine": _machine(),
    "config": {"threads": 2, "rounds": 3, "max_new_tokens": 64, "prompts": ["a", "b"], "reference": "onnx_pyfunc",
               "skipped": {"llama_cpp": "llama-cpp-python not installed"}},
    "engines": {
        "onnx_pyfunc": {"label": "ONNX pyfunc", "streams": True, "threads": "ort 2", "peak_rss_mb": 450.4,
                        "rounds": [_decode_round(100.0, 0.15, 90.0, 0.7, ttft_long=0.6),
                                   _decode_round(80.0, 0.25, 70.0, 0.9, ttft_long=0.9),
                                   _decode_round(120.0, 0.20, 95.0, 0.6, ttft_long=0.7)]},
        "transformers_pyfunc": {"label": "transformers flavour", "streams": False, "threads": "torch 2",
                                "peak_rss_mb": 1100.0,
                                "rounds": [_decode_round(None, 2.0, 30.0, 2.0, 60.0),
                                           _decode_round(None, 2.2, 29.0, 2.2, 60.0),
                                           _decode_round(None, 1.9, 31.0, 1.9, 60.0)]},
        "llama_server": {"label": "llama-server", "streams": True, "threads": "-t 2", "peak_rss_mb": 200.0,
                         "rounds": [_decode_round(50.0, 0.1, 45.0, 1.2), _decode_round(100.0, 0.1, 90.0, 0.7),
                                    _decode_round(60.0, 0.1, 55.0, 1.1)]},
    },
    "replies": {"identical_share": {"onnx_pyfunc": {"onnx_pyfunc": 1.0, "transformers_pyfunc": 0.0,
                                                    "llama_server": 0.25},
                                    "transformers_pyfunc": {"onnx_pyfunc": 0.0, "transformers_pyfunc": 1.0,
                                                            "llama_server": 0.0},
                                    "llama_server": {"onnx_pyfunc": 0.25, "transformers_pyfunc": 0.0,
                                                     "llama_server": 1.0}},
                "same_text_every_round": {"onnx_pyfunc": 1.0, "transformers_pyfunc": 1.0, "llama_server": 0.5}},
}


def _serve_round(tok_s, failures=None, requests=24, ttft=None, identical=None, others=0.1):
    return {"requests": requests, "ok": requests - sum((failures or {}).values()), "failures": failures or {},
            "wall_s": 10.0, "reply_tokens": 300, "tokens_per_s": tok_s, "requests_per_s": tok_s / 32,
            "ttft_p50_s": ttft, "latency_p50_s": 0.5, "latency_p95_s": 0.9, "mean_reply_tokens": 31.0,
            "greedy_identical_alone": identical, "seeded_identical_alone": None, "other_cpu_share": others}


SERVE = {
    "benchmark": "serve",
    "machine": _machine(),
    "config": {"threads": 2, "rounds": 3, "clients": 8, "requests": 24, "max_tokens": 32, "turn_tokens": 48,
               "conversations": 4, "skipped": {}},
    "servers": {"chatpack": {"label": "chatpack serve", "command": ["python", "-m", "steps.serve", "--threads", "2"]},
                "llama_server": {"label": "llama-server", "command": ["/x/build/bin/llama-server", "-t", "2"]}},
    "rows": [
        {"server": "chatpack", "workload": "mixed", "clients": 1,
         "rounds": [_serve_round(80.0, ttft=0.2), _serve_round(70.0, ttft=0.3, others=0.5),
                    _serve_round(90.0, ttft=0.25, others=0.0)]},
        {"server": "chatpack", "workload": "mixed", "clients": 8,
         "rounds": [_serve_round(88.0, {"http_429": 2}, identical=1.0), _serve_round(84.0, identical=1.0),
                    _serve_round(99.0, {"timeout": 1, "http_429": 1}, identical=0.5)]},
        {"server": "llama_server", "workload": "mixed", "clients": 1,
         "rounds": [_serve_round(100.0), _serve_round(100.0), _serve_round(100.0)]},
        {"server": "llama_server", "workload": "mixed", "clients": 8,
         "rounds": [_serve_round(160.0), _serve_round(150.0), _serve_round(170.0)]},
    ],
    "multi_turn": [{"server": "llama_server", "rounds": [
        {"warm_ttft_s": 0.05, "cold_ttft_s": 0.5, "warm_over_cold": 0.1, "warm_prompt_tokens": 300,
         "cold_prompt_tokens": 301, "failures": {}, "pairs": 8},
        {"warm_ttft_s": 0.07, "cold_ttft_s": 0.6, "warm_over_cold": 0.12, "warm_prompt_tokens": 300,
         "cold_prompt_tokens": 301, "failures": {"broken_stream": 1}, "pairs": 7},
        {"warm_ttft_s": 0.06, "cold_ttft_s": 0.4, "warm_over_cold": 0.15, "warm_prompt_tokens": 300,
         "cold_prompt_tokens": 301, "failures": {}, "pairs": 8}]}],
}


def _row(table: str, first_cell: str, column: str | None = None) -> list[str]:
    """Cells of the table row whose first cell is ``first_cell`` (and whose second is ``column``, if given)."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell and (column is None or cells[1:3] == column.split("/")):
            return cells
    raise AssertionError(f"no row {first_cell!r} {column or ''} in:\n{table}")


def test_spread_and_percentile():
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([None, None]) is None
    assert spread([1.0, 2.0, 10.0, 20.0])["median"] == 6.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([], 50) is None


def test_decode_table_medians_ranges_and_skips():
    table = report.decode_tables(DECODE, "benchmarks/results/decode.json")
    assert table.startswith("Source: `benchmarks/results/decode.json` (2026-01-02, commit abc1234). Test CPU, 2 "
                            "physical cores / 2 logical, 24.0 GiB; 2 threads for every engine; 3 interleaved rounds; "
                            "1-min load average at round start 0.5-2.5.")
    onnx = _row(table, "ONNX pyfunc")
    assert onnx[1] == "ort 2"
    assert onnx[2] == "100.0 (80.0-120.0)"  # decode tok/s: median and range over the rounds
    assert onnx[3] == "0.200 (0.150-0.250)"  # TTFT
    assert onnx[4] == "0.700 (0.600-0.900)"  # TTFT of the long prompt
    assert onnx[5] == "90.0 (70.0-95.0)"
    assert onnx[7] == "64.0"  # equal in every round: no range
    assert onnx[8] == "2.00 (0.80-2.00)"  # per-round ratios to llama-server: 100/50, 80/100, 120/60
    assert onnx[9] == "450"
    tf = _row(table, "transformers flavour")
    assert tf[2] == "n/a" and tf[3] == "2.000 (1.900-2.200) (whole reply)" and tf[4] == "n/a" and tf[8] == "n/a"
    assert _row(table, "llama_cpp")[2] == "skipped: llama-cpp-python not installed"
    assert _row(table, "llama_server")[1:] == ["50%", "25%", "0%", "100%"]


def test_serve_table_failures_scaling_and_turns():
    table = report.serve_tables(SERVE)
    assert "other processes used 10% (0-50%) of the CPU while we measured" in table.splitlines()[0]
    solo = _row(table, "chatpack serve", "mixed/1")
    assert solo[3] == "80.0 (70.0-90.0)" and solo[4] == "1.00" and solo[9] == "0/72"
    assert solo[6] == "0.250 (0.200-0.300)" and solo[14] == "10% (0-50%)" and solo[12] == "n/a"  # no structured
    busy = _row(table, "chatpack serve", "mixed/8")
    assert busy[3] == "88.0 (84.0-99.0)"
    assert busy[4] == "1.10 (1.10-1.20)"  # 88/80, 84/70, 99/90 per round
    assert busy[9] == "4/72 (http_429 x3, timeout x1)"  # summed over rounds, per kind
    assert busy[10] == "83%" and busy[11] == "n/a" and busy[6] == "n/a"
    anchor = _row(table, "llama-server", "mixed/8")
    assert anchor[4] == "1.60 (1.50-1.70)" and anchor[9] == "0/72"
    turns = _row(table.split("| later turn TTFT s |")[1], "llama-server")
    assert turns == ["llama-server", "0.060 (0.050-0.070)", "0.500 (0.400-0.600)", "0.12 (0.10-0.15)",
                     "300 / 301", "1 (broken_stream x1)"]
    assert "`llama-server -t 2`" in table  # binaries shown by name, not by this machine's path


def test_readme_block_replaced_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    before = "# x\n\n## Benchmarks\n\nprose\n\n<!-- benchmarks:decode:begin (generated) -->\nSTALE-TABLE\n" \
             "<!-- benchmarks:decode:end -->\n\n<!-- benchmarks:serve:begin -->\n<!-- benchmarks:serve:end -->\n" \
             "\n## Next\nuntouched\n"
    readme.write_text(before)
    results = tmp_path / "results"
    results.mkdir()
    (results / "decode.json").write_text(json.dumps(DECODE))
    (results / "serve.json").write_text(json.dumps(SERVE))
    assert report.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    after = readme.read_text()
    assert after.startswith("# x\n\n## Benchmarks\n\nprose\n\n<!-- benchmarks:decode:begin (generated) -->\nSource:")
    assert after.endswith("<!-- benchmarks:serve:end -->\n\n## Next\nuntouched\n")
    assert "STALE-TABLE" not in after and "| chatpack serve | mixed | 8 |" in after
    assert report.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    with pytest.raises(ValueError, match="markers"):
        report.replace_block("no markers here", "decode", "x")


def test_committed_results_match_readme():
    """README's tables are what the committed results give (rerun python -m benchmarks.report after a benchmark)."""
    if not (ROOT / "benchmarks" / "results" / "decode.json").is_file():
        pytest.skip("no committed results")
    assert report.main(["--check"]) == 0


def test_client_counts_broken_streams_and_times_first_text():
    reply = parse_stream(Reply(streamed=True, start=0.0), [
        b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}', b"",
        b'data: {"choices": [{"delta": {"content": "Hi"}}]}', b": keep-alive",
        b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, '
        b'"completion_tokens": 2}}', b"data: [DONE]"])
    assert reply.ok and reply.text == "Hi" and reply.pieces == 1 and reply.ttft_s is not None
    assert (reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == ("stop", 5, 2)
    cut = parse_stream(Reply(streamed=True), [b'data: {"choices": [{"delta": {"content": "Hi"}}]}'])
    assert not cut.ok and cut.failure == "broken_stream" and "[DONE]" in cut.detail
    error = parse_stream(Reply(streamed=True), [b'data: {"error": {"message": "boom"}}', b"data: [DONE]"])
    assert error.failure == "broken_stream" and "boom" in error.detail
    whole = parse_whole(Reply(), json.dumps([{"choices": [{"message": {"content": "ok"}, "finish_reason": "length"}],
                                              "usage": {"completion_tokens": 3}}]).encode())
    assert whole.ok and whole.text == "ok" and whole.ttft_s == whole.total_s and whole.completion_tokens == 3
    assert parse_whole(Reply(), b"<html>").failure == "bad_reply"


def test_serve_figures_count_failures_by_kind_and_eos_alike():
    llama = bench_serve.Server("llama_server", "l", [], "/health", "/v1", eos_counted=True)
    ours = bench_serve.Server("chatpack", "c", [], "/health", "/v1")
    stopped = Reply(ok=True, completion_tokens=10, finish_reason="stop", total_s=1.0, text="a")
    cut = Reply(ok=True, completion_tokens=32, finish_reason="length", total_s=1.0, text="b")
    assert llama.reply_tokens(stopped) == 9 and llama.reply_tokens(cut) == 32 and ours.reply_tokens(stopped) == 10
    bodies = bench_serve.mixed_bodies(4, 32)
    replies = [stopped, Reply(failure="http_429"), Reply(failure="timeout"), Reply(failure="http_429")]
    alone = [Reply(ok=True, text="a", completion_tokens=1), None, None, None]  # only answered requests are re-sent
    figures = bench_serve.load_figures(llama, bodies, replies, 2.0, alone, 0.25)
    assert figures["failures"] == {"http_429": 2, "timeout": 1}
    assert (figures["requests"], figures["ok"], figures["reply_tokens"], figures["tokens_per_s"]) == (4, 1, 9, 4.5)
    assert figures["seeded_identical_alone"] == 1.0  # request 0 is a seeded one
    assert figures["greedy_identical_alone"] is None  # the greedy ones failed: nothing to compare
    assert figures["other_cpu_share"] == 0.25


def test_mixed_workload_covers_every_kind():
    bodies = bench_serve.mixed_bodies(24, 32, first=5000)
    streamed = [b for b in bodies if b.get("stream")]
    seeded = [b for b in bodies if "seed" in b]
    long = [b for b in bodies if b["messages"][0]["content"].endswith(bench_serve.LONG_PROMPT)]
    prompts = [b["messages"][0]["content"] for b in bodies + bench_serve.mixed_bodies(24, 32, first=6000)]
    assert len(set(prompts)) == len(prompts)  # no prompt repeats, within a phase or across phases
    assert (len(streamed), len(seeded), len(long)) == (12, 8, 12)
    assert {(bool(b.get("stream")), "seed" in b, b in long) for b in bodies} == {
        (s, x, g) for s in (True, False) for x in (True, False) for g in (True, False)}
    assert len({b["seed"] for b in seeded}) == len(seeded)


def test_agent_workload_is_thirds_of_schemas_forced_tools_and_plain_with_unique_prompts():
    bodies = bench_serve.agent_bodies(24, 64, first=3000)
    kinds = [("schema" if "response_format" in b else "tools" if "tools" in b else "plain") for b in bodies]
    assert kinds.count("schema") == kinds.count("tools") == kinds.count("plain") == 8
    assert all(b["tool_choice"] == "required" for b in bodies if "tools" in b)
    assert all(b["temperature"] == 0.0 and not b.get("stream") for b in bodies)
    prompts = [b["messages"][0]["content"] for b in bodies + bench_serve.agent_bodies(24, 64, first=4000)]
    assert len(set(prompts)) == len(prompts)


def test_structured_replies_are_checked_against_their_schema_or_tool_parameters():
    from benchmarks.structured_cases import structured_valid

    schema_body, tools_body, plain = bench_serve.agent_bodies(3, 64)
    schema = schema_body["response_format"]["json_schema"]["schema"]  # city and country, both strings
    assert schema == {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                      "required": ["city", "country"]}
    assert structured_valid(schema_body, '{"city": "Paris", "country": "France"}', None) is True
    assert structured_valid(schema_body, '{"city": "Paris"}', None) is False  # a required key missing
    assert structured_valid(schema_body, '{"city": "Paris", "country": ', None) is False  # cut short
    call = {"name": "calculate", "arguments": '{"expression": "3 * 7"}'}
    assert structured_valid(tools_body, "", [call]) is True
    assert structured_valid(tools_body, "21", None) is False  # required: a text answer breaks the contract
    assert structured_valid(tools_body, "", [{"name": "search", "arguments": "{}"}]) is False  # not offered
    assert structured_valid(tools_body, "", [{**call, "arguments": '{"expression": 3}'}]) is False
    assert structured_valid(plain, "anything", None) is None
    whole = parse_whole(Reply(), json.dumps({"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": call}]}, "finish_reason": "tool_calls"}]}).encode())
    assert whole.ok and whole.extra["tool_calls"] == [call] and json.loads(whole.text) == [call]
    cut = Reply(ok=True, text='{"city": "a", "coun', finish_reason="length")  # max_tokens: counted apart
    replies = [Reply(ok=True, text='{"city": "a", "country": "b"}'), whole, Reply(ok=True, text="x"), cut,
               Reply(ok=True, text="no call")]
    server = bench_serve.Server("s", "s", [], "/h", "/v1")
    figures = bench_serve.load_figures(server, [schema_body, tools_body, plain, schema_body, tools_body], replies,
                                       1.0, None)
    assert (figures["structured_valid"], figures["structured_invalid"]) == (2 / 3, 1)
    assert figures["structured_cut_at_max_tokens"] == 1


def test_decode_round_figures_and_reply_comparison():
    samples = [{"ttft_s": 0.1, "total_s": 1.1, "tokens": 51, "text": "x", "prompt": 0},
               {"ttft_s": 0.3, "total_s": 2.3, "tokens": 101, "text": "y", "prompt": 1},
               {"ttft_s": 0.9, "total_s": 1.9, "tokens": 11, "text": "w", "prompt": 2}]
    figures = bench_decode.round_figures(samples, long_prompt=2)
    assert figures["decode_tokens_per_s"] == pytest.approx(50.0)  # median of 50, 50, 10 tokens/s
    assert figures["ttft_s"] == pytest.approx(0.2) and figures["ttft_long_s"] == pytest.approx(0.9)
    assert figures["e2e_tokens_per_s"] == pytest.approx(101 / 2.3)  # median of 46.4, 43.9, 5.8
    assert figures["latency_s"] == pytest.approx(1.9)
    assert figures["reply_tokens"] == pytest.approx(163 / 3)
    samples = samples[:2]
    whole = bench_decode.round_figures([{**s, "ttft_s": s["total_s"], "streams": False} for s in samples])
    assert whole["decode_tokens_per_s"] is None
    other = [{**samples[0]}, {**samples[1], "text": "z"}]
    compared = bench_decode.compare_replies({"a": samples, "b": other})
    assert compared["identical_share"]["a"]["b"] == 0.5 and compared["same_text_every_round"]["a"] == 1.0


def test_benchmark_modules_import_without_side_effects():
    code = ("import os, sys; before = dict(os.environ); "
            "import benchmarks.bench_decode, benchmarks.bench_serve, benchmarks.report, benchmarks.engines; "
            "assert dict(os.environ) == before, 'environment changed'; "
            "bad = [m for m in sys.modules if m == 'tests' or m.startswith(('tests.', 'mlflow', 'torch', "
            "'onnxruntime', 'transformers', 'chatpack'))]; assert not bad, bad")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def test_threads_key_declared_on_a_copy(tmp_path):
    import yaml

    from benchmarks.common import with_threads_key

    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {
        "config": {"max_new_tokens": 256}, "loader_module": "x"}}}))
    (model / "weights.bin").write_text("w")
    copy, made = with_threads_key(str(model), tmp_path / "copies")
    assert made and Path(copy).parent == tmp_path / "copies"
    meta = yaml.safe_load((Path(copy) / "MLmodel").read_text())
    assert meta["flavors"]["python_function"]["config"] == {"max_new_tokens": 256, "threads": 0}
    assert (Path(copy) / "weights.bin").read_text() == "w"
    assert "threads" not in yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]["config"]
    assert with_threads_key(copy, tmp_path / "copies") == (copy, False)  # already declared: used as it is


def test_cpu_meter_reports_a_share():
    from benchmarks.common import CpuMeter

    meter = CpuMeter([]).start()
    sum(i * i for i in range(200_000))
    share = meter.stop()
    assert share is None or 0.0 <= share <= 1.0
