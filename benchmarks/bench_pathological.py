"""Pathological constraints against ``chatpack serve``: what a constraint that is hard to compile costs the request
that sends it, and the other requests being answered meanwhile.

    MLFLOW_TRACKING_URI=... python -m benchmarks.bench_pathological --model_uri models:/m-... [--threads N]
        [--compile_timeout_s 5] [--rounds 3] [--cases deep_nesting,large_enum,many_tools,many_any_of]

Starts ``python -m steps.serve --model_uri <uri> --threads N --compile_timeout_s <s> --tracing false`` on loopback
(the model copied first, when its logged config lacks ``threads``, as ``bench_serve`` does) and waits for
``/health``. Cases (each request greedy, streamed, ``--max_tokens`` at most):

- ``deep_nesting``: ``response_format`` JSON schema of ``--depth`` (40) nested required objects, an integer inside;
- ``large_enum``: a required property whose value is one of ``--enum_size`` (5,000) distinct strings;
- ``many_tools``: ``--tools`` (100) tools of 5 required parameters each (string, integer, boolean, enum, number),
  ``tool_choice: required``;
- ``many_any_of``: a property that is ``anyOf`` ``--any_of`` (200) object branches, each with a key of its own.

Every round gives each case fresh names (a round tag in its keys, strings or tool names), so each send compiles
anew instead of hitting the server's cache of compiled constraints; the case order rotates by round. Per case and
round:

1. **baseline**: 2 background clients (``--clients``) send short plain greedy requests (``max_tokens`` 16, each prompt
   numbered) in a loop for ``--baseline_s`` seconds; their latency median and p95.
2. **during**: the same clients again; after ``--lead_s`` the pathological request is sent. Its HTTP status (200
   with a reply, checked: JSON valid against the schema, or tool calls of listed tools whose arguments are valid
   against their parameters; or 400 with the server's error message), its latency (to the last byte), and its first
   output (the first text or tool-call piece: about the compile plus the prompt pass; for a 400, the latency). The
   background requests that overlapped its compile (from its send to its first output, or to its end for a 400)
   and those that overlapped the whole request: count, failures, latency median and p95.

The server's own request checks may refuse a case before anything compiles (at most 64 tools, at most 65,536
characters of schemas and tools per request, a prompt that must fit the model's context: 100 tools' system prompt
does not fit SmolLM2's 8,192 tokens, nor does 64 tools'); that 400 and its message are recorded like a compile
refusal: the table's error column tells them apart. ``--enum_size 3000`` stays within the character limit.

Figures are medians with min-max over the rounds (``--rounds`` >= 3); failures of background requests are counted
by kind, never dropped. Writes ``benchmarks/results/pathological.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common, structured_cases
from benchmarks.client import Reply, chat, get_json

CASES = ("deep_nesting", "large_enum", "many_tools", "many_any_of")


# -- the pathological requests ---------------------------------------------------------------------------------------
def deep_nesting(depth: int, tag: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {"value": {"type": "integer", "minimum": 0,
                                                                          "maximum": 9}}, "required": ["value"]}
    for level in range(depth, 0, -1):
        key = f"level_{level}_{tag}"
        schema = {"type": "object", "properties": {key: schema}, "required": [key]}
    return {"messages": [{"role": "user", "content": "Fill in the nested record; put a digit at the bottom."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "nested", "schema": schema}}}


def large_enum(size: int, tag: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"code": {"enum": [f"code-{tag}-{i:05d}" for i in range(size)]}},
              "required": ["code"]}
    return {"messages": [{"role": "user", "content": "Pick one product code for a blue umbrella."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}}}


def many_tools(count: int, tag: str) -> dict[str, Any]:
    def params(i: int) -> dict[str, Any]:
        props = {"query": {"type": "string", "maxLength": 40}, "limit": {"type": "integer", "minimum": 1,
                                                                          "maximum": 50},
                 "verbose": {"type": "boolean"}, "mode": {"enum": ["fast", "exact", f"mode_{i}"]},
                 "threshold": {"type": "number"}}
        return {"type": "object", "properties": props, "required": list(props)}

    tools = [{"type": "function", "function": {"name": f"tool_{tag}_{i:03d}", "description": f"Action number {i}",
                                               "parameters": params(i)}} for i in range(count)]
    return {"messages": [{"role": "user", "content": "Search the catalogue for umbrellas."}], "tools": tools,
            "tool_choice": "required"}


def many_any_of(branches: int, tag: str) -> dict[str, Any]:
    options = [{"type": "object", "properties": {f"kind_{tag}_{i}": {"type": "integer", "minimum": 0,
                                                                    "maximum": 9}},
                "required": [f"kind_{tag}_{i}"]} for i in range(branches)]
    schema = {"type": "object", "properties": {"choice": {"anyOf": options}}, "required": ["choice"]}
    return {"messages": [{"role": "user", "content": "Choose one kind and give it a digit."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "kinds", "schema": schema}}}


def case_body(case: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """The pathological request ``case`` with this round's ``tag`` in its names (so that it compiles anew)."""
    maker = {"deep_nesting": lambda: deep_nesting(args.depth, tag), "large_enum": lambda: large_enum(
        args.enum_size, tag), "many_tools": lambda: many_tools(args.tools, tag),
             "many_any_of": lambda: many_any_of(args.any_of, tag)}[case]
    return {**maker(), "max_tokens": args.max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}


def check_reply(body: dict[str, Any], reply: Reply) -> tuple[bool, str]:
    """(valid, why not) for a 200 reply (see :func:`benchmarks.structured_cases.check_reply`)."""
    valid, why = structured_cases.check_reply(body, reply.text, reply.extra.get("tool_calls"), reply.finish_reason)
    return bool(valid), why


def error_message(reply: Reply) -> str:
    """The server's error message from a refused request's body (``{"error": {"message": ...}}``), else the body."""
    try:
        return str(json.loads(reply.detail)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return reply.detail[:300]


# -- background load -------------------------------------------------------------------------------------------------
class Background:
    """``clients`` threads sending short plain greedy requests in a loop until :meth:`stop`; each request's
    (start, end, failure or None) on this process's ``time.perf_counter`` clock."""

    def __init__(self, url: str, clients: int, max_tokens: int, timeout: float, tag: str):
        self.url, self.max_tokens, self.timeout, self.tag = url, max_tokens, timeout, tag
        self.samples: list[tuple[float, float, str | None]] = []
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]

    def __enter__(self) -> Background:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _client(self, c: int) -> None:
        n = 0
        while not self._stop.is_set():
            body = {"messages": [{"role": "user", "content": f"Name one colour. ({self.tag} {c}-{n})"}],
                    "max_tokens": self.max_tokens, "temperature": 0.0}
            reply = chat(self.url, body, self.timeout)
            with self._lock:
                self.samples.append((reply.start, reply.start + reply.total_s, None if reply.ok else reply.failure))
            n += 1


def window_figures(samples: list[tuple[float, float, str | None]], lo: float | None = None,
                   hi: float | None = None) -> dict[str, Any]:
    """Latency median and p95 of the requests in ``samples`` that overlap [lo, hi] (all of them when no window),
    failures counted by kind (a failed request's latency is not in the figures)."""
    inside = [s for s in samples if lo is None or (s[0] < hi and s[1] > lo)]
    latencies = [end - start for start, end, failure in inside if failure is None]
    failures: dict[str, int] = {}
    for _start, _end, failure in inside:
        if failure is not None:
            failures[failure] = failures.get(failure, 0) + 1
    return {"requests": len(inside), "failures": failures, "p50_s": common.percentile(latencies, 50),
            "p95_s": common.percentile(latencies, 95)}


# -- one case --------------------------------------------------------------------------------------------------------
def run_case(url: str, case: str, args: argparse.Namespace, r: int) -> dict[str, Any]:
    """Baseline, then the pathological request under the same background load (see the module docstring)."""
    tag = f"r{r}"
    with Background(url, args.clients, 16, args.timeout, f"{case} {tag} base") as base:
        time.sleep(args.baseline_s)
    body = case_body(case, args, tag)
    with Background(url, args.clients, 16, args.timeout, f"{case} {tag} load") as load:
        time.sleep(args.lead_s)
        reply = chat(url, body, args.timeout)
        time.sleep(0.05)
    start, end = reply.start, reply.start + reply.total_s
    first = [t for t in (reply.ttft_s, reply.extra.get("first_call_s")) if t is not None]
    first_output = min(first) if first else None
    valid, why = check_reply(body, reply) if reply.ok else (False, "")
    result = {
        "status": reply.status, "ok": reply.ok, "failure": reply.failure, "valid": valid, "invalid_because": why,
        "error": error_message(reply) if reply.status == 400 else (reply.detail[:300] if not reply.ok else ""),
        "latency_s": reply.total_s, "first_output_s": first_output if reply.ok else reply.total_s,
        "finish_reason": reply.finish_reason, "completion_tokens": reply.completion_tokens,
        "prompt_tokens": reply.prompt_tokens, "reply_preview": (reply.text or json.dumps(
            reply.extra.get("tool_calls") or ""))[:200], "request_bytes": len(json.dumps(body)),
        "background_baseline": window_figures(base.samples),
        "background_during_compile": window_figures(load.samples, start, start + (
            first_output if reply.ok and first_output is not None else reply.total_s)),
        "background_during_request": window_figures(load.samples, start, end),
    }
    print(f"  round {r + 1} {case}: status {reply.status} {'valid' if valid else why or result['error'][:80]}, "
          f"{reply.total_s:.2f} s; background p50 {_s(result['background_baseline']['p50_s'])} -> "
          f"{_s(result['background_during_compile']['p50_s'])} s", file=sys.stderr, flush=True)
    return result


def _s(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Statuses counted, valid replies counted, and medians (min-max) over the rounds of one case."""
    statuses: dict[str, int] = {}
    for x in rounds:
        statuses[str(x["status"])] = statuses.get(str(x["status"]), 0) + 1
    fig = {"statuses": statuses, "valid": sum(x["valid"] for x in rounds), "rounds": len(rounds),
           "errors": sorted({x["error"] for x in rounds if x["error"]})[:3],
           "latency_s": common.spread(x["latency_s"] for x in rounds),
           "first_output_s": common.spread(x["first_output_s"] for x in rounds)}
    for window in ("background_baseline", "background_during_compile", "background_during_request"):
        fig[window] = {q: common.spread(x[window][q] for x in rounds) for q in ("p50_s", "p95_s")}
        fig[window]["requests"] = sum(x[window]["requests"] for x in rounds)
        fig[window]["failures"] = sum(sum(x[window]["failures"].values()) for x in rounds)
    fig["compile_over_baseline_p50"] = common.spread(
        common.ratio(x["background_during_compile"]["p50_s"], x["background_baseline"]["p50_s"]) for x in rounds)
    return fig


def _cell(s: dict[str, float] | None, digits: int = 2) -> str:
    return common.fmt_summary(s, digits)


def table(results: dict[str, Any]) -> str:
    """One row per case: the pathological request's outcome and the background requests' latency around it."""
    rows = ["| case | status (rounds) | valid replies | latency s | first output s | background p50 s (baseline / "
            "during compile) | background p95 s (baseline / during compile) | background requests during compile "
            "(failed) | error |", "|---|---|---|---|---|---|---|---|---|"]
    for case, result in results["cases"].items():
        s = result["summary"]
        base, during = s["background_baseline"], s["background_during_compile"]
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(s["statuses"].items()))
        error = s["errors"][0].replace("|", "\\|")[:100] if s["errors"] else ""
        rows.append(f"| {case} | {statuses} | {s['valid']}/{s['rounds']} | {_cell(s['latency_s'])} | "
                    f"{_cell(s['first_output_s'])} | {_cell(base['p50_s'], 3)} / {_cell(during['p50_s'], 3)} | "
                    f"{_cell(base['p95_s'], 3)} / {_cell(during['p95_s'], 3)} | {during['requests']} "
                    f"({during['failures']}) | {error} |")
    return "\n".join(rows)


# -- main ------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", default="demo", type=common.model_uri_arg,
                   help="The ONNX model: a models:/ or runs:/ URI, or demo (the default: the ONNX model `make demo` "
                        "registered).")
    p.add_argument("--threads", type=int, default=common.physical_cores(),
                   help="serve --threads: onnxruntime intra-op threads (default: physical cores).")
    p.add_argument("--compile_timeout_s", type=float, default=5.0,
                   help="serve --compile_timeout_s: the longest a constraint may compile before a 400.")
    p.add_argument("--cases", default=",".join(CASES), help="Comma-separated: " + ", ".join(CASES))
    p.add_argument("--rounds", type=int, default=3, help="Rounds over the cases, fresh names each round (>= 3).")
    p.add_argument("--depth", type=int, default=40, help="deep_nesting: levels of nested objects.")
    p.add_argument("--enum_size", type=int, default=5000, help="large_enum: strings in the enum.")
    p.add_argument("--tools", type=int, default=100, help="many_tools: tools (5 required parameters each).")
    p.add_argument("--any_of", type=int, default=200, help="many_any_of: anyOf branches.")
    p.add_argument("--max_tokens", type=int, default=512,
                   help="Reply budget of a pathological request (room for the 40-level object).")
    p.add_argument("--clients", type=int, default=2, help="Background clients sending short plain requests.")
    p.add_argument("--baseline_s", type=float, default=8.0,
                   help="Seconds of background load alone before each pathological request (the baseline).")
    p.add_argument("--lead_s", type=float, default=1.0,
                   help="Seconds the background load runs before the pathological request is sent.")
    p.add_argument("--timeout", type=float, default=300.0, help="Per-request timeout in seconds.")
    p.add_argument("--out", default=str(common.RESULTS / "pathological.json"), help="Results JSON.")
    p.add_argument("--log_dir", default="", help="Where the server's log goes (default: a temporary folder).")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """The cases to run; SystemExit naming the flag for arguments the benchmark cannot measure with."""
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise SystemExit(f"--cases: unknown or none {unknown} (known: {', '.join(CASES)})")
    if not args.model_uri.startswith(("models:/", "runs:/")) and not Path(args.model_uri).exists():
        raise SystemExit(f"--model_uri: expected models:/... (or runs:/..., or a model folder), got {args.model_uri!r}")
    for flag, value, least in (("--rounds", args.rounds, 3), ("--threads", args.threads, 1),
                               ("--clients", args.clients, 1), ("--depth", args.depth, 1),
                               ("--enum_size", args.enum_size, 1), ("--tools", args.tools, 1),
                               ("--any_of", args.any_of, 1), ("--max_tokens", args.max_tokens, 1)):
        if value < least:
            raise SystemExit(f"{flag} must be >= {least} (got {value})")
    for flag, value in (("--compile_timeout_s", args.compile_timeout_s), ("--baseline_s", args.baseline_s),
                        ("--timeout", args.timeout)):
        if value <= 0:
            raise SystemExit(f"{flag} must be > 0 (got {value})")
    if args.lead_s < 0:
        raise SystemExit(f"--lead_s must be >= 0 (got {args.lead_s})")
    return cases


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_serve import Server

    args = parse_args(argv)
    cases = check_args(args)
    common.exit_on_sigterm()
    started = time.perf_counter()
    served_uri, threads_key_added = common.with_threads_key(args.model_uri)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-pathological-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server("chatpack", "`chatpack serve` (ONNX)",
                    [sys.executable, "-m", "steps.serve", "--model_uri", served_uri, "--port", "{port}",
                     "--threads", str(args.threads), "--compile_timeout_s", str(args.compile_timeout_s),
                     "--tracing", "false"], "/health", "/v1/chat/completions")
    per_case: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    health: Any = None
    try:
        server.start(log_dir)
        health = get_json(f"http://127.0.0.1:{server.port}/health")
        for body in ({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},  # warm-up, not measured
                     {"messages": [{"role": "user", "content": "Yes or no?"}], "max_tokens": 8,
                      "response_format": {"type": "json_object"}}):
            chat(server.url, body, args.timeout)
        for r in range(args.rounds):
            for case in cases[r % len(cases):] + cases[:r % len(cases)]:
                per_case[case].append(run_case(server.url, case, args, r))
    finally:
        rss = server.peak_rss_mb()
        server.stop()
    payload = {
        "benchmark": "pathological constraints against chatpack serve",
        "machine": {**common.machine_info(args.threads), "loadavg_at_end": common.loadavg()},
        "config": {"model_uri": args.model_uri, "threads_key_added_to_a_copy": threads_key_added,
                   "threads": args.threads, "compile_timeout_s": args.compile_timeout_s, "rounds": args.rounds,
                   "cases": cases, "depth": args.depth, "enum_size": args.enum_size, "tools": args.tools,
                   "any_of": args.any_of, "max_tokens": args.max_tokens, "clients": args.clients,
                   "background_max_tokens": 16, "baseline_s": args.baseline_s, "lead_s": args.lead_s,
                   "timeout_s": args.timeout, "server_compute": (health or {}).get("compute"),
                   "server_threads": server.threads or None, "peak_rss_mb": rss,
                   "command": [c.replace(str(common.ROOT) + "/", "") for c in server.cmd],
                   "seconds": round(time.perf_counter() - started, 1)},
        "cases": {c: {"rounds": rows, "summary": summarize(rows)} for c, rows in per_case.items() if rows},
    }
    common.write_json(Path(args.out), payload)
    print(table(payload))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
