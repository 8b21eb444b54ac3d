"""The benchmarks' table builder, statistics, client parsing and failure counting, on small hand-made results (the
benchmarks themselves are not run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import bench_constrained, bench_decode, bench_pathological, bench_serve, report
from benchmarks.client import Reply, parse_stream, parse_whole
from benchmarks.common import percentile, spread

ROOT = Path(__file__).resolve().parent.parent


def _machine() -> dict:
    return {"date": "2026-01-02T03:04:05+00:00", "cpu_model": "Test CPU", "physical_cores": 2, "logical_cpus": 2,
            "memory_gib": 24.0, "libraries": {"onnxruntime-genai": "0.18.0", "llama-server": "1234 (abc)"},
            "threads": 2, "git_commit": "abc1234", "loadavg_per_round": [[1.5, 1, 1], [2.5, 1, 1], [0.5, 1, 1]]}


def _decode_round(decode, ttft, e2e, latency, tokens=64.0, ttft_long=None, prefill=None):
    return {"decode_tokens_per_s": decode, "ttft_s": ttft, "ttft_long_s": ttft_long, "prefill_tokens_per_s": prefill,
            "e2e_tokens_per_s": e2e, "latency_s": latency, "reply_tokens": tokens}


DECODE = {
    "benchmark": "decode",
    "machine": _machine(),
    "config": {"threads": 2, "rounds": 3, "max_new_tokens": 64, "prompts": ["a", "b"], "reference": "onnx_pyfunc",
               "skipped": {"llama_cpp": "llama-cpp-python not installed"}},
    "engines": {
        "onnx_pyfunc": {"label": "ONNX pyfunc", "streams": True, "threads": "ort 2", "peak_rss_mb": 450.4,
                        "rounds": [_decode_round(100.0, 0.15, 90.0, 0.7, ttft_long=0.6, prefill=500.0),
                                   _decode_round(80.0, 0.25, 70.0, 0.9, ttft_long=0.9, prefill=300.0),
                                   _decode_round(120.0, 0.20, 95.0, 0.6, ttft_long=0.7, prefill=400.0)]},
        "transformers_pyfunc": {"label": "transformers flavour", "streams": False, "threads": "torch 2",
                                "peak_rss_mb": 1100.0,
                                "rounds": [_decode_round(None, 2.0, 30.0, 2.0, 60.0),
                                           _decode_round(None, 2.2, 29.0, 2.2, 60.0),
                                           _decode_round(None, 1.9, 31.0, 1.9, 60.0)]},
        "llama_server": {"label": "llama-server", "streams": True, "threads": "-t 2", "peak_rss_mb": 200.0,
                         "rounds": [_decode_round(50.0, 0.1, 45.0, 1.2, prefill=250.0),
                                    _decode_round(100.0, 0.1, 90.0, 0.7, prefill=300.0),
                                    _decode_round(60.0, 0.1, 55.0, 1.1, prefill=200.0)]},
    },
    "llama_bench": {"Q4_0": [{"prefill_tokens_per_s": 23.0, "decode_tokens_per_s": 9.6},
                             {"prefill_tokens_per_s": 21.0, "decode_tokens_per_s": 9.0},
                             {"prefill_tokens_per_s": 25.0, "decode_tokens_per_s": 9.9}]},
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
    assert onnx[5] == "400.0 (300.0-500.0)"  # prefill tokens/s of the long prompt
    assert onnx[6] == "90.0 (70.0-95.0)"
    assert onnx[8] == "64.0"  # equal in every round: no range
    assert onnx[9] == "2.00 (0.80-2.00)"  # per-round ratios to llama-server: 100/50, 80/100, 120/60
    assert onnx[10] == "2.00 (1.00-2.00)"  # prefill ratios: 500/250, 300/300, 400/200
    assert onnx[11] == "450"
    tf = _row(table, "transformers flavour")
    assert tf[2] == "n/a" and tf[3] == "2.000 (1.900-2.200) (whole reply)" and tf[4] == "n/a" and tf[9] == "n/a"
    bench = _row(table, "llama.cpp `llama-bench` (Q4_0, no HTTP)")
    assert bench[2] == "9.6 (9.0-9.9)" and bench[5] == "23.0 (21.0-25.0)"
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
    assert report.main(["--results", str(results), "--pages", str(readme), "--check"]) == 1
    assert report.main(["--results", str(results), "--pages", str(readme)]) == 0
    after = readme.read_text()
    assert after.startswith("# x\n\n## Benchmarks\n\nprose\n\n<!-- benchmarks:decode:begin (generated) -->\nSource:")
    assert after.endswith("<!-- benchmarks:serve:end -->\n\n## Next\nuntouched\n")
    assert "STALE-TABLE" not in after and "| chatpack serve | mixed | 8 |" in after
    assert report.main(["--results", str(results), "--pages", str(readme), "--check"]) == 0
    with pytest.raises(ValueError, match="markers"):
        report.replace_block("no markers here", "decode", "x")


def test_committed_results_match_the_docs_tables():
    """The docs' tables are what the committed results give (rerun python -m benchmarks.report after a benchmark)."""
    if not (ROOT / "benchmarks" / "results" / "decode.json").is_file():
        pytest.skip("no committed results")
    assert report.main(["--check"]) == 0


def _arriving(monkeypatch, events: list[tuple[float, bytes]]):
    """The lines of ``events`` as a stream each line of which arrives at its time (the client's clock is faked)."""
    from benchmarks import client

    now = [0.0]
    monkeypatch.setattr(client, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def lines():
        for at, line in events:
            now[0] = at
            yield line

    return lines()


def test_client_counts_broken_streams_and_times_first_text(monkeypatch):
    reply = parse_stream(Reply(streamed=True, start=0.25), _arriving(monkeypatch, [
        (0.5, b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}'), (0.6, b""),
        (1.5, b'data: {"choices": [{"delta": {"content": "Hi"}}]}'), (1.7, b": keep-alive"),
        (2.0, b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, '
              b'"completion_tokens": 2}}'), (2.75, b"data: [DONE]")]))
    assert reply.ok and reply.text == "Hi" and reply.pieces == 1
    # time to the first text (not to the role chunk's empty content), and to [DONE], from when the request was sent
    assert (reply.ttft_s, reply.total_s) == (1.25, 2.5)
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
    from benchmarks.structured_cases import check_reply

    schema_body, tools_body, plain = bench_serve.agent_bodies(3, 64)
    schema = schema_body["response_format"]["json_schema"]["schema"]  # city and country, both strings
    assert schema == {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                      "required": ["city", "country"]}
    assert check_reply(schema_body, '{"city": "Paris", "country": "France"}', None) == (True, "")
    assert check_reply(schema_body, '{"city": "Paris"}', None)[0] is False  # a required key missing
    assert check_reply(schema_body, '{"city": "Paris", "country": ', None)[0] is False  # cut short
    call = {"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression": "3*7"}'}}
    assert check_reply(tools_body, "", [call]) == (True, "")
    assert "no tool call" in check_reply(tools_body, "21", None)[1]  # required: a text answer breaks the contract
    assert "unknown tool" in check_reply(tools_body, "", [{"function": {"name": "search", "arguments": "{}"}}])[1]
    assert check_reply(tools_body, "", [{"function": {**call["function"], "arguments": '{"expression": 3}'}}])[0] \
        is False
    assert check_reply(plain, "anything", None) == (None, "")
    whole = parse_whole(Reply(), json.dumps({"choices": [{"message": {"content": None, "tool_calls": [call]},
                                                          "finish_reason": "tool_calls"}]}).encode())
    cut = Reply(ok=True, text='{"city": "a", "coun', finish_reason="length")  # max_tokens: counted apart
    replies = [Reply(ok=True, text='{"city": "a", "country": "b"}'), whole, Reply(ok=True, text="x"), cut,
               Reply(ok=True, text="no call")]
    server = bench_serve.Server("s", "s", [], "/h", "/v1")
    figures = bench_serve.load_figures(server, [schema_body, tools_body, plain, schema_body, tools_body], replies,
                                       1.0, None)
    assert (figures["structured_valid"], figures["structured_invalid"]) == (2 / 3, 1)
    assert figures["structured_cut_at_max_tokens"] == 1
    other = {**call, "id": "c9"}  # another call id, the same call: the same reply
    assert bench_serve.same_reply(whole, Reply(ok=True, extra={"tool_calls": [other]}))
    assert not bench_serve.same_reply(whole, Reply(ok=True, extra={"tool_calls": [
        {"function": {"name": "calculate", "arguments": "{}"}}]}))


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


def test_gguf_files_label_each_file_by_its_quantisation_type(tmp_path):
    from benchmarks import common

    q4, q8 = tmp_path / "phi3-mini-Q4_0.gguf", tmp_path / "phi3-mini.Q8_0.gguf"
    q4.write_bytes(b"x")
    q8.write_bytes(b"x")
    assert common.gguf_files([str(q4), str(q8)], bundled=False) == {"Q4_0": str(q4), "Q8_0": str(q8)}
    assert common.gguf_files([f"mine={q4}"], bundled=False) == {"mine": str(q4)}
    assert common.gguf_files([], bundled=False) == {}
    with pytest.raises(SystemExit, match="--gguf: label 'Q4_0' given twice"):
        common.gguf_files([str(q4), str(q4)], bundled=False)
    with pytest.raises(SystemExit, match="--gguf: no such file"):
        common.gguf_files([str(tmp_path / "missing-Q4_0.gguf")], bundled=False)
    engines = bench_decode.expand_engines(["onnx_pyfunc", "llama_server"], {"Q4_0": str(q4), "Q8_0": str(q8)})
    assert engines == ["onnx_pyfunc", "llama_server@Q4_0", "llama_server@Q8_0"]


def test_request_deadline_scales_with_the_model_weights(tmp_path):
    from benchmarks import common

    (tmp_path / "model.onnx").write_bytes(b"x" * 1000)
    assert common.request_deadline_s(tmp_path) == 120.0  # a small model: the base deadline
    (tmp_path / "model.onnx.data").write_bytes(b"")
    with open(tmp_path / "model.onnx.data", "wb") as f:
        f.truncate(int(3e9))  # 3 GB of weights (sparse): ten times the base
    assert common.request_deadline_s(tmp_path) == pytest.approx(1200.0, rel=1e-3)


def test_benchmark_modules_import_without_side_effects():
    code = ("import os, sys; before = dict(os.environ); "
            "import benchmarks.bench_decode, benchmarks.bench_serve, benchmarks.report, benchmarks.engines, "
            "benchmarks.bench_constrained, benchmarks.bench_pathological; "
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


def test_cpu_meter_reports_the_share_other_processes_used(monkeypatch):
    from benchmarks import common

    clock = {"wall": 100.0, "busy": 1000.0, "ours": 10.0, "groups": {42: 5.0}}
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: clock["wall"]))
    monkeypatch.setattr(common, "os", SimpleNamespace(times=lambda: SimpleNamespace(user=clock["ours"], system=0.0),
                                                      cpu_count=lambda: 4))
    monkeypatch.setattr(common, "busy_cpu_seconds", lambda: clock["busy"])
    monkeypatch.setattr(common, "group_cpu_seconds", lambda group: clock["groups"][group])

    def measured(groups: list[int], wall: float, busy: float, ours: float, group: float) -> float | None:
        meters = common.CpuMeter(groups).start()
        clock["wall"] += wall
        clock["busy"] += busy
        clock["ours"] += ours
        clock["groups"][42] += group
        return meters.stop()

    # 2 s on 4 CPUs = 8 CPU-s; the machine was busy 5 CPU-s, this process 1 and its server's group 2 of them
    assert measured([42], 2.0, 5.0, 1.0, 2.0) == 0.25
    assert measured([], 2.0, 5.0, 1.0, 2.0) == 0.5  # a group not named as ours is someone else
    assert measured([42], 2.0, 3.0, 1.0, 2.0) == 0.0  # only we were busy
    assert measured([], 1.0, 9.0, 0.0, 0.0) == 1.0  # clock ticks rounding past the machine: capped
    monkeypatch.setattr(common, "busy_cpu_seconds", lambda: None)  # no /proc/stat
    assert measured([], 1.0, 1.0, 0.0, 0.0) is None


def test_cpu_meter_reads_this_machine():
    from benchmarks.common import CpuMeter, busy_cpu_seconds

    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat")
    before = busy_cpu_seconds()
    meter = CpuMeter([]).start()
    deadline = time.perf_counter() + 0.2  # /proc/stat counts in 10 ms ticks: stay busy for many of them
    while time.perf_counter() < deadline:
        sum(i * i for i in range(10_000))
    share = meter.stop()
    assert share is not None and 0.0 <= share <= 1.0
    assert busy_cpu_seconds() > before  # the machine's busy time moves (we were busy)


def _cells(table: str, *first: str) -> list[str]:
    """Cells of the table row whose first cells are ``first``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:len(first)] == list(first):
            return cells
    raise AssertionError(f"no row {first} in:\n{table}")


def _sample(tokens, decode_s=1.0, ttft_s=0.1, wall_s=None, error=None, text="x", **extra):
    return {"tokens": tokens, "decode_s": decode_s, "ttft_s": ttft_s, "wall_s": wall_s or ttft_s + decode_s,
            "text": text, "finish_reason": "length", "error": error, **extra}


def test_constrained_figures_count_failures_and_batch_wall():
    alone = bench_constrained.alone_figures([_sample(11, 1.0, 0.1), _sample(21, 1.0, 0.3),
                                             _sample(0, error="GuidanceError: boom")])
    assert alone["decode_tok_s"] == pytest.approx(15.0)  # (10 + 20) / 2 s; the failed call is not in it
    assert (alone["failures"], alone["requests"], alone["errors"]) == (1, 3, ["GuidanceError: boom"])
    assert alone["ttft_s"] == pytest.approx(0.1)
    batch = bench_constrained.batch_figures([_sample(17, ttft_s=0.2), _sample(17, ttft_s=0.4)], wall=2.2)
    assert batch["decode_tok_s"] == pytest.approx(32 / (2.2 - 0.2))  # sum(tokens - 1) / (wall - median TTFT)
    assert bench_constrained.batch_figures([_sample(0, error="x")], 1.0)["decode_tok_s"] is None
    rounds = {"unconstrained": [{"decode_tok_s": v, "failures": 0} for v in (40.0, 50.0, 60.0)],
              "constrained": [{"decode_tok_s": v, "failures": f} for v, f in ((20.0, 1), (50.0, 0), (None, 2))]}
    summary = bench_constrained.summarize(rounds, ("decode_tok_s",))
    assert summary["summary"]["constrained"]["failures"] == 3
    assert summary["constrained_over_unconstrained"] == {"median": 0.75, "min": 0.5, "max": 1.0, "n": 2}
    ff = bench_constrained.ff_figures([_sample(31, steps=2, forced_passes=3, forced_taken=25, wall_s=0.5),
                                       _sample(11, steps=10, forced_passes=0, forced_taken=0, wall_s=0.5)])
    assert (ff["passes"], ff["tokens"], ff["forced_taken"]) == (15, 42, 25)
    assert ff["tokens_per_pass"] == pytest.approx(40 / 15)  # the first token of each reply comes from its prompt


def _spread(*values):
    return spread(values)


def _part(u, c, ratio, largest=None, failures=(0, 0)):
    modes = {}
    for mode, tok_s, failed in (("unconstrained", u, failures[0]), ("constrained", c, failures[1])):
        modes[mode] = {"decode_tok_s": _spread(*tok_s), "ttft_s": _spread(0.1, 0.2, 0.3), "failures": failed}
        if largest is not None:
            modes[mode]["largest_batch"] = largest[mode == "constrained"]
    return {"summary": modes, "constrained_over_unconstrained": _spread(*ratio)}


CONSTRAINED = {"workloads": {
    "json_schema": {"alone": _part((40.0, 50.0, 45.0), (30.0, 35.0, 40.0), (0.75, 0.7, 0.89)),
                    "batch": {**_part((100.0, 120.0, 110.0), (90.0, 90.0, 90.0), (0.9, 0.75, 0.82), (8, 8),
                                      failures=(0, 2)), "batch": 8}},
    "old_shape": _part((10.0, 10.0, 10.0), (5.0, 5.0, 5.0), (0.5, 0.5, 0.5))},  # written before batch-N existed
    "fast_forward": {"long_keys": {
        "summary": {"on": {"tokens_per_pass": _spread(4.5, 4.0, 5.0), "passes": _spread(20, 20, 20),
                           "forced_taken": _spread(70, 70, 70), "wall_s": _spread(1.0, 1.2, 1.1), "failures": 0},
                    "off": {"tokens_per_pass": _spread(1.0, 1.0, 1.0), "passes": _spread(90, 90, 90),
                            "forced_taken": _spread(0, 0, 0), "wall_s": _spread(3.0, 3.3, 3.6), "failures": 0}},
        "speedup_wall": _spread(3.0, 2.75, 3.27), "identical_replies": {"same": 18, "pairs": 18, "all": True}}}}


def test_constrained_tables_alone_batched_and_fast_forward():
    table = bench_constrained.table(CONSTRAINED)
    assert _cells(table, "json_schema", "alone")[2:6] == ["45.0 (40.0-50.0)", "35.0 (30.0-40.0)", "0.75 (0.70-0.89)",
                                                          "0.200 / 0.200"]
    batch = _cells(table, "json_schema", "batch-8")
    assert batch[2:4] == ["110.0 (100.0-120.0)", "90.0 (0 / 2 failed)"] and batch[6] == "8 / 8"
    assert _cells(table, "old_shape", "alone")[2:5] == ["10.0", "5.0", "0.50"]
    assert len([line for line in table.splitlines() if line.startswith("| old_shape")]) == 1  # no batch row
    ff = _cells(bench_constrained.ff_table(CONSTRAINED), "long_keys")
    assert ff[1:] == ["4.50 (4.00-5.00) / 1.00", "20 / 90", "70", "1.10 (1.00-1.20) / 3.30 (3.00-3.60)",
                      "3.00 (2.75-3.27)", "yes (18/18)"]


def test_constrained_arguments_and_long_keys_workload():
    args = bench_constrained.parse_args(["--onnx_dir", "/m"])
    assert (args.batch, args.ff_workloads, args.fast_forward) == (8, "long_keys", "on")
    bench_constrained.check_args(args)
    for bad, flag in ((["--rounds", "2"], "--rounds"), (["--batch", "0"], "--batch"),
                      (["--workloads", "json_schema,nope"], "--workloads"), (["--ff_workloads", "x"], "--ff_workloads"),
                      (["--ff_max_new_tokens", "0"], "--ff_max_new_tokens")):
        with pytest.raises(SystemExit, match=flag):
            bench_constrained.check_args(bench_constrained.parse_args(["--onnx_dir", "/m", *bad]))
    with pytest.raises(SystemExit, match="--onnx_dir"):
        bench_constrained.check_args(bench_constrained.parse_args([]))
    bench_constrained.check_args(bench_constrained.parse_args(["--onnx_dir", "/m", "--batch", "1",
                                                               "--ff_workloads", ""]))
    schema = bench_constrained.LONG_KEYS_SCHEMA
    assert len(schema["required"]) == 6 and all(25 <= len(k) <= 40 for k in schema["required"])
    pairs = bench_constrained.requests("long_keys", 2)
    assert len(pairs) == 2 and pairs[0][1]["response_format"]["json_schema"]["schema"] is schema


def _depth(schema) -> int:
    return 1 + max((_depth(s) for s in schema.get("properties", {}).values()), default=0)


def test_pathological_cases_have_their_sizes_and_fresh_names():
    args = bench_pathological.parse_args(["--model_uri", "models:/m-1"])
    assert bench_pathological.check_args(args) == list(bench_pathological.CASES)
    deep = bench_pathological.case_body("deep_nesting", args, "r0")
    assert _depth(deep["response_format"]["json_schema"]["schema"]) == 42  # the root, 40 levels, the integer
    assert deep["stream"] and deep["max_tokens"] == 512
    enum = bench_pathological.case_body("large_enum", args, "r0")["response_format"]["json_schema"]["schema"]
    assert len(set(enum["properties"]["code"]["enum"])) == 5000
    tools = bench_pathological.case_body("many_tools", args, "r1")
    assert tools["tool_choice"] == "required" and len(tools["tools"]) == 100
    assert {len(t["function"]["parameters"]["required"]) for t in tools["tools"]} == {5}
    branches = bench_pathological.case_body("many_any_of", args, "r0")["response_format"]["json_schema"]["schema"]
    assert len(branches["properties"]["choice"]["anyOf"]) == 200
    assert json.dumps(bench_pathological.case_body("large_enum", args, "r1")) != json.dumps(
        bench_pathological.case_body("large_enum", args, "r0"))  # a round's names differ: no cached compile
    for bad, flag in ((["--rounds", "1"], "--rounds"), (["--cases", "deep_nesting,odd"], "--cases"),
                      (["--compile_timeout_s", "0"], "--compile_timeout_s"), (["--clients", "0"], "--clients")):
        with pytest.raises(SystemExit, match=flag):
            bench_pathological.check_args(bench_pathological.parse_args(["--model_uri", "models:/m-1", *bad]))
    with pytest.raises(SystemExit, match="--model_uri"):
        bench_pathological.check_args(bench_pathological.parse_args(["--model_uri", "no-such-model"]))


def test_pathological_replies_checked_and_errors_read():
    args = bench_pathological.parse_args(["--model_uri", "models:/m-1", "--depth", "2", "--tools", "2"])
    deep = bench_pathological.case_body("deep_nesting", args, "r0")
    good = Reply(ok=True, text='{"level_1_r0": {"level_2_r0": {"value": 3}}}')
    assert bench_pathological.check_reply(deep, good) == (True, "")
    valid, why = bench_pathological.check_reply(deep, Reply(ok=True, text='{"level_1_r0": {', finish_reason="length"))
    assert not valid and "JSONDecodeError" in why and "length" in why
    tools = bench_pathological.case_body("many_tools", args, "r0")
    call = {"function": {"name": "tool_r0_001", "arguments": json.dumps(
        {"query": "umbrella", "limit": 3, "verbose": False, "mode": "fast", "threshold": 0.5})}}
    assert bench_pathological.check_reply(tools, Reply(ok=True, extra={"tool_calls": [call]})) == (True, "")
    wrong = {"function": {"name": "tool_r0_009", "arguments": "{}"}}
    assert "unknown tool" in bench_pathological.check_reply(tools, Reply(ok=True, extra={"tool_calls": [wrong]}))[1]
    assert not bench_pathological.check_reply(tools, Reply(ok=True, text="hello"))[0]
    refused = Reply(status=400, detail=json.dumps({"error": {"message": "tools: at most 64 tools, got 100"}}))
    assert bench_pathological.error_message(refused) == "tools: at most 64 tools, got 100"
    assert bench_pathological.error_message(Reply(status=400, detail="<html>")) == "<html>"


def test_pathological_windows_summary_and_table():
    samples = [(0.0, 1.0, None), (0.5, 1.5, None), (1.2, 2.0, None), (2.5, 3.0, "timeout"), (3.5, 4.5, None)]
    assert bench_pathological.window_figures(samples)["requests"] == 5
    during = bench_pathological.window_figures(samples, 1.1, 2.8)  # overlapping: 0.5-1.5, 1.2-2.0, 2.5-3.0
    assert during == {"requests": 3, "failures": {"timeout": 1}, "p50_s": 0.8, "p95_s": 1.0}

    def round_(status, latency, base, compile_p50, error="", valid=False):
        window = {"requests": 2, "failures": {}, "p50_s": None, "p95_s": None}
        return {"status": status, "valid": valid, "error": error, "latency_s": latency, "first_output_s": latency,
                "background_baseline": {**window, "p50_s": base, "p95_s": base * 1.5},
                "background_during_compile": {**window, "p50_s": compile_p50, "p95_s": compile_p50,
                                              "failures": {"http_429": 1}},
                "background_during_request": window}

    rounds = [round_(200, 1.0, 0.3, 0.6, valid=True), round_(200, 1.2, 0.3, 0.9, valid=True),
              round_(400, 5.0, 0.4, 0.4, error="response_format: cannot be enforced: takes more than 5 s")]
    summary = bench_pathological.summarize(rounds)
    assert summary["statuses"] == {"200": 2, "400": 1} and summary["valid"] == 2
    assert summary["compile_over_baseline_p50"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summary["background_during_compile"]["failures"] == 3
    row = _cells(bench_pathological.table({"cases": {"deep_nesting": {"summary": summary}}}), "deep_nesting")
    assert row[1:8] == ["200 x2, 400 x1", "2/3", "1.20 (1.00-5.00)", "1.20 (1.00-5.00)", "0.300 (0.300-0.400) / "
                        "0.600 (0.400-0.900)", "0.450 (0.450-0.600) / 0.600 (0.400-0.900)", "6 (3)"]
    assert row[8].startswith("response_format: cannot be enforced")


def test_client_joins_streamed_tool_calls_and_keeps_whole_ones(monkeypatch):
    reply = parse_stream(Reply(streamed=True, start=0.0), _arriving(monkeypatch, [
        (0.5, b'data: {"choices": [{"delta": {"role": "assistant"}}]}'),
        (0.75, b'data: {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": '
               b'{"name": "look"}}]}}]}'),
        (1.0, b'data: {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": '
              b'{"arguments": "{\\"q\\": "}}]}}]}'),
        (1.5, b'data: {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}'),
        (2.0, b'data: {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}'), (2.0, b"data: [DONE]")]))
    assert reply.ok and reply.finish_reason == "tool_calls" and reply.extra["first_call_s"] == 0.75
    assert reply.ttft_s is None and reply.total_s == 2.0  # no text: no time to first text
    assert reply.extra["tool_calls"] == [{"type": "function", "id": "c1",
                                          "function": {"name": "look", "arguments": '{"q": 1}'}}]
    calls = [{"id": "c2", "type": "function", "function": {"name": "x", "arguments": "{}"}}]
    whole = parse_whole(Reply(), json.dumps({"choices": [{"message": {"content": None, "tool_calls": calls},
                                                          "finish_reason": "tool_calls"}]}).encode())
    assert whole.ok and whole.text == "" and whole.extra["tool_calls"] == calls
