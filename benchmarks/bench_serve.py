"""Serving load benchmark: our OpenAI server (``steps.serve``) against llama.cpp's own server (``llama-server``) on
the same model, same thread count, driven by one HTTP client (``benchmarks/client.py``), interleaved over rounds.

    python -m benchmarks.bench_serve --model_uri models:/m-... [--threads N] [--clients 8 | 2,4,8] [--rounds 3]
        [--servers chatpack,llama_server[,mlflow]] [--llama_server PATH] [--gguf [LABEL=]PATH ...]

``--gguf`` may repeat: llama-server then runs once per GGUF (``llama_server@<label>``, e.g. Q4_0 and Q8_0), with as
many slots as the most clients and ``--ctx_per_slot`` tokens of context each. Workloads, each sequential (1 client)
and with each of ``--clients`` concurrent clients (a comma-separated list measures each level, fresh prompts at each;
the replies under load are checked against the same requests sent alone at the most clients):

* ``uniform``: short prompts, greedy, whole replies (not streamed);
* ``mixed``: half streamed, a third sampled with a per-request seed, a quarter of prompts long (~330 tokens);
* ``agent`` (opt-in, ``--workloads``): what agent frameworks send: a third ``json_schema`` structured outputs, a third
  tool calls with ``tool_choice: required``, a third plain; greedy, whole replies; every structured reply that
  ended (not cut at ``max_tokens``: those are counted apart) checked against its schema or its tool's parameters
  (``structured valid``); llama-server runs with ``--jinja`` for it;
* ``multi-turn`` (sequential): conversations whose later turns are timed against a cold request with the same
  history (a different tag at the very start of the conversation, so no server can reuse a cached prefix).

Every failure is counted by kind (``http_<status>``, ``timeout``, ``connection``, ``broken_stream``, ``bad_reply``).
Servers that are not being driven are paused (SIGSTOP on their process group). Loopback only; every server started
is stopped at the end. Writes ``benchmarks/results/serve.json``; ``python -m benchmarks.report`` makes README's
tables from it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.client import Reply, chat
from benchmarks.structured_cases import agent_bodies, check_reply

LONG_PROMPT = common.meeting_notes("Which item should I look at first, and why?")
CONVERSATIONS = [
    ["I am planning a vegetable garden on a small balcony. " + LONG_PROMPT.split(". ", 1)[0] + ". What should I grow?",
     "Which of those needs the least water?", "How often should I water it in summer?"],
    ["Explain what a database index is, in plain words.", "When does an index make things slower?",
     "Give me one rule of thumb for choosing which columns to index."],
    [LONG_PROMPT, "Who should I talk to first about the billing report?", "Draft a two-line message to them."],
    ["I want to start running. How should I begin?", "How do I avoid sore knees?", "What should I eat before a run?"],
]


@dataclass
class Server:
    """One server under test: how to start it, where it answers, and how it counts reply tokens."""

    name: str
    label: str
    cmd: list[str]
    health: str
    route: str
    streams: bool = True
    eos_counted: bool = False  # the server's completion_tokens include the EOS token it stopped on
    threads: str = ""
    notes: str = ""
    version: str = ""
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.route}"

    def start(self, log_dir: Path) -> None:
        self.port = common.free_port()
        cmd = [c.replace("{port}", str(self.port)) for c in self.cmd]
        log = open(log_dir / f"{self.name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=common.ROOT)
        log.close()
        common.wait_for_http(f"http://127.0.0.1:{self.port}{self.health}", timeout=600, proc=self.proc)
        logged = (log_dir / f"{self.name}.log").read_text(errors="replace")
        if "threads were ignored" in logged:  # MLflow's warning when the logged model_config lacks the key
            self.threads += ("; NOT APPLIED: MLflow dropped model_config 'threads' (not in the logged model_config),"
                             " so onnxruntime ran with its default (physical cores)")

    def pause(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the server's processes (the leader and its children), summed."""
        if self.proc is None:
            return None
        total = 0.0
        for pid in [self.proc.pid] + _children(self.proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                pass
        return total or None

    def stop(self) -> None:
        if self.proc is not None:
            common.stop_process(self.proc, group=True)

    def reply_tokens(self, reply: Reply) -> int | None:
        """Reply tokens from the server's own usage, EOS not counted (we never send stop strings, so a "stop"
        finish is an EOS)."""
        if reply.completion_tokens is None:
            return None
        return reply.completion_tokens - (1 if self.eos_counted and reply.finish_reason == "stop" else 0)


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10)
        kids = [int(x) for x in out.stdout.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return kids + [g for k in kids for g in _children(k)]


def make_servers(args: argparse.Namespace) -> tuple[list[Server], dict[str, str]]:
    servers, skipped = [], {}
    threads = str(args.threads)
    for name in [s for s in args.servers.split(",") if s]:
        if name in ("chatpack", "chatpack_as_logged", "chatpack_before", "chatpack_reuse_decoded"):
            as_logged, before = name == "chatpack_as_logged", name == "chatpack_before"
            inexact = ["--reuse_decoded", "true"] if name == "chatpack_reuse_decoded" else []
            if before and not args.baseline_model_uri:
                raise SystemExit("--servers chatpack_before needs --baseline_model_uri")
            uri = args.model_uri if as_logged else args.baseline_model_uri if before else args.served_model_uri
            servers.append(Server(
                name, f"`chatpack serve` ({args.model_label}" + (
                    ", model as logged)" if as_logged else f", {args.baseline_label})" if before else
                    ", --reuse_decoded true)" if inexact else ")"),
                [sys.executable, "-m", "steps.serve", "--model_uri", uri, "--port", "{port}",
                 "--threads", threads, "--queue_size", str(max(64, 4 * max(args.client_levels))), *inexact],
                "/health", "/v1/chat/completions", threads=f"--threads {threads} (onnxruntime intra-op)"))
        elif name == "llama_server":
            binary, ggufs = common.find_llama_server(args.llama_server or None), common.gguf_files(args.gguf, True)
            if not binary or not ggufs:
                skipped[name] = "llama-server not built (benchmarks/build_llama_server.sh)" if not binary \
                    else "no GGUF (--gguf; the default is the bundled model's own, not installed)"
                continue
            slots, version = str(max(args.client_levels)), common.llama_server_version(binary)
            jinja = ["--jinja"] if "agent" in args.workloads.split(",") else []  # its tools and schemas need it
            for label, gguf in ggufs.items():
                servers.append(Server(
                    "llama_server" if len(ggufs) == 1 else f"llama_server@{label}",
                    f"llama.cpp `llama-server` ({label} GGUF, {slots} slots)",
                    [binary, "-m", gguf, "-t", threads, "-tb", threads, "-np", slots,
                     "-c", str(args.ctx_per_slot * int(slots)), *jinja, "--host", "127.0.0.1", "--port", "{port}"],
                    "/health", "/v1/chat/completions", eos_counted=True, threads=f"-t {threads} -tb {threads}",
                    notes="defaults otherwise (prompt cache on)", version=version))
        elif name == "mlflow":
            servers.append(Server(
                "mlflow", "`mlflow models serve` (ONNX int4)",
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model_uri, "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", "{port}"],
                "/ping", "/invocations", streams=False, threads="onnxruntime default (no way to pass threads)",
                notes="no streaming route: uniform workload only"))
        else:
            raise SystemExit(f"--servers: unknown server {name!r} (chatpack, chatpack_as_logged, chatpack_before, "
                             "chatpack_reuse_decoded, llama_server, mlflow)")
    return servers, skipped


# -- workloads -------------------------------------------------------------------------------------------------------
def short_prompt(n: int) -> str:
    return f"Tell me one fact about the number {n}."


def long_prompt(n: int) -> str:
    return f"Notes #{n}. {LONG_PROMPT}"


def uniform_bodies(n: int, max_tokens: int, first: int = 0) -> list[dict[str, Any]]:
    """``n`` greedy whole-reply requests on short prompts, numbered from ``first`` (each prompt unique)."""
    return [{"messages": [{"role": "user", "content": short_prompt(first + i)}], "max_tokens": max_tokens,
             "temperature": 0.0} for i in range(n)]


def mixed_bodies(n: int, max_tokens: int, first: int = 0) -> list[dict[str, Any]]:
    """Request i: streamed when i is even; sampled (seed 1000 + i) when i % 3 == 0; long prompt when i % 4 >= 2.
    Prompts are numbered from ``first`` (each unique: no server can answer from a cache of an identical prompt)."""
    bodies = []
    for i in range(n):
        prompt = long_prompt(first + i) if i % 4 >= 2 else short_prompt(first + i)
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        if i % 3 == 0:
            body.update(temperature=0.8, top_p=0.95, seed=1000 + i)
        else:
            body["temperature"] = 0.0
        if i % 2 == 0:
            body.update(stream=True, stream_options={"include_usage": True})
        bodies.append(body)
    return bodies


def run_load(server: Server, bodies: list[dict[str, Any]], clients: int, timeout: float
             ) -> tuple[list[Reply], float, float | None]:
    """Send ``bodies`` from ``clients`` clients; the replies, the wall time, and the share of the machine's CPU that
    other processes used meanwhile."""
    meter = common.CpuMeter([server.proc.pid] if server.proc else []).start()
    start = time.perf_counter()
    if clients == 1:
        replies = [chat(server.url, b, timeout) for b in bodies]
    else:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            replies = list(pool.map(lambda b: chat(server.url, b, timeout), bodies))
    wall = time.perf_counter() - start
    return replies, wall, meter.stop()


def resend_alone(server: Server, bodies: list[dict[str, Any]], replies: list[Reply], timeout: float
                 ) -> list[Reply | None]:
    """Not timed: each request that got a reply under load, sent again on its own (for the same-text check)."""
    return [chat(server.url, b, timeout) if r.ok else None for b, r in zip(bodies, replies)]


def load_figures(server: Server, bodies: list[dict[str, Any]], replies: list[Reply], wall: float,
                 alone: list[Reply | None] | None, other_cpu: float | None = None) -> dict[str, Any]:
    """One row's figures for one round; ``alone`` holds the same requests answered one at a time (None: not
    checked), against which greedy and seeded reply texts are compared."""
    ok = [r for r in replies if r.ok]
    failures: dict[str, int] = {}
    for r in replies:
        if not r.ok:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    tokens = [server.reply_tokens(r) for r in ok]
    streamed = [r.ttft_s for r in ok if r.streamed and r.ttft_s is not None]
    figures = {
        "requests": len(replies), "ok": len(ok), "failures": failures,
        "failure_details": sorted({f"{r.failure}: {r.detail[:120]}" for r in replies if not r.ok})[:5],
        "wall_s": wall, "reply_tokens": sum(t for t in tokens if t is not None),
        "tokens_missing_usage": sum(t is None for t in tokens),
        "tokens_per_s": sum(t for t in tokens if t is not None) / wall,
        "requests_per_s": len(ok) / wall,
        "ttft_p50_s": common.percentile(streamed, 50),
        "latency_p50_s": common.percentile([r.total_s for r in ok], 50),
        "latency_p95_s": common.percentile([r.total_s for r in ok], 95),
        "mean_reply_tokens": (sum(t for t in tokens if t is not None) / len(tokens)) if tokens else None,
        "other_cpu_share": other_cpu,
    }
    # Structured replies that ended (not cut at max_tokens, which no constraint can make valid) against their
    # schema or tools; cut ones are counted apart.
    structured = [(b, r) for b, r in zip(bodies, replies) if r.ok and (b.get("response_format") or b.get("tools"))]
    checked = [bool(check_reply(b, r.text, r.extra.get("tool_calls"))[0]) for b, r in structured
               if r.finish_reason != "length"]
    if structured:
        figures["structured_valid"] = sum(checked) / len(checked) if checked else None
        figures["structured_invalid"] = len(checked) - sum(checked)
        figures["structured_cut_at_max_tokens"] = len(structured) - len(checked)
    if alone is not None:
        for kind, pick in (("greedy", lambda b: not b.get("temperature")), ("seeded", lambda b: "seed" in b)):
            pairs = [(a, b) for body, a, b in zip(bodies, replies, alone) if pick(body) and a.ok and b and b.ok]
            figures[f"{kind}_identical_alone"] = (sum(same_reply(a, b) for a, b in pairs) / len(pairs)
                                                  if pairs else None)
    return figures


def same_reply(a: Reply, b: Reply) -> bool:
    """The same text and the same tool calls (by name and arguments: call ids differ from run to run)."""
    def calls(r: Reply) -> list[tuple[str, str]]:
        return [(c["function"]["name"], c["function"]["arguments"]) for c in r.extra.get("tool_calls") or []]
    return a.text == b.text and calls(a) == calls(b)


def conversation_turns(server: Server, max_tokens: int, timeout: float, rnd: int, think_s: float = 0.0
                       ) -> dict[str, Any]:
    """Each conversation turn by turn (streamed, greedy); every later turn is followed by a cold request with the
    same history under another tag. Returns the round's warm/cold TTFTs and failures."""
    warm, cold, ratios, warm_prompt, cold_prompt, failures, texts = [], [], [], [], [], {}, []

    def count(reply: Reply) -> bool:
        if not reply.ok:
            failures[reply.failure] = failures.get(reply.failure, 0) + 1
        return reply.ok

    for c, turns in enumerate(CONVERSATIONS):
        history: list[dict[str, str]] = []
        for t, user in enumerate(turns):
            history.append({"role": "user", "content": user})
            tag = {"role": "system", "content": f"[r{rnd}c{c}w] You are a concise, helpful assistant."}
            body = {"messages": [tag] + history, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                    "stream_options": {"include_usage": True}}
            reply = chat(server.url, body, timeout)
            if not count(reply):
                break
            texts.append(reply.text)
            if t > 0:
                cold_tag = {"role": "system", "content": f"[r{rnd}c{c}k] You are a concise, helpful assistant."}
                other = chat(server.url, {**body, "messages": [cold_tag] + history}, timeout)
                if count(other) and reply.ttft_s and other.ttft_s:
                    warm.append(reply.ttft_s)
                    cold.append(other.ttft_s)
                    ratios.append(reply.ttft_s / other.ttft_s)
                    warm_prompt.append(reply.prompt_tokens)
                    cold_prompt.append(other.prompt_tokens)
            history.append({"role": "assistant", "content": reply.text})
            time.sleep(think_s)  # the user reads the reply before the next turn
    return {"pairs": len(warm), "failures": failures, "think_s": think_s,
            "warm_ttft_s": common.percentile(warm, 50), "cold_ttft_s": common.percentile(cold, 50),
            "warm_over_cold": common.percentile(ratios, 50),
            "warm_prompt_tokens": common.percentile([p for p in warm_prompt if p is not None], 50),
            "cold_prompt_tokens": common.percentile([p for p in cold_prompt if p is not None], 50),
            "texts": texts}


def same_conversations(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float | None:
    """Share of turns whose reply text two servers gave alike, round by round (None: nothing to compare)."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra["texts"], rb["texts"])]
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", default="demo", type=common.model_uri_arg,
                   help="The ONNX model: a models:/ or runs:/ URI, or demo (the default: the ONNX model `make demo` "
                        "registered).")
    p.add_argument("--servers", default="chatpack,llama_server",
                   help="Comma-separated: chatpack, chatpack_as_logged (the model without the threads key), "
                        "chatpack_reuse_decoded (serve --reuse_decoded true), llama_server, mlflow (uniform "
                        "workload only).")
    p.add_argument("--threads", type=int, default=common.physical_cores(),
                   help="Compute threads of every server (default: physical cores).")
    p.add_argument("--clients", default="8",
                   help="Concurrent clients, or a comma-separated list of levels (e.g. 2,4,8); llama-server gets as "
                        "many slots as the most.")
    p.add_argument("--requests", type=int, default=24, help="Requests per workload and round (>= clients).")
    p.add_argument("--max_tokens", type=int, default=32, help="Reply budget per request.")
    p.add_argument("--turn_tokens", type=int, default=48, help="Reply budget per conversation turn.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (>= 3).")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="Per-request timeout in seconds; 0 = 120 s scaled by the model's ONNX weights over 300 MB.")
    p.add_argument("--llama_server", default="", help="llama-server binary (default: $LLAMA_SERVER, the build "
                                                      "script's folder, PATH).")
    p.add_argument("--gguf", action="append", default=[],
                   help="[LABEL=]PATH of a GGUF for llama-server; repeat for several (each its own server, "
                        "llama_server@LABEL). Default: the bundled SmolLM2 Q4_1 file.")
    p.add_argument("--ctx_per_slot", type=int, default=2048, help="llama-server context tokens per slot (-c is this "
                                                                   "times the slots).")
    p.add_argument("--multi_turn", type=lambda v: v.lower() == "true", default=True,
                   help="true (default): also time the multi-turn conversations; false: skip them.")
    p.add_argument("--baseline_model_uri", default="", help="For --servers chatpack_before: the same model logged "
                   "with an earlier commit's code (a logged model runs the code it was logged with).")
    p.add_argument("--model_label", default="ONNX int4", help="How the tables name --model_uri's build.")
    p.add_argument("--baseline_label", default="logged before the continuous batch",
                   help="How the tables name the baseline model's code.")
    p.add_argument("--think_s", type=float, default=0.0,
                   help="Multi-turn: seconds the user reads a reply before the next turn (0: the next turn at once).")
    p.add_argument("--multi_turn_only", action="store_true", help="Run only the multi-turn conversations.")
    p.add_argument("--workloads", default="uniform,mixed",
                   help="Comma-separated load workloads: uniform, mixed, agent (see the module docstring).")
    p.add_argument("--out", default=str(common.RESULTS / "serve.json"), help="Results JSON.")
    p.add_argument("--log_dir", default="", help="Where server logs go (default: a temporary folder).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    common.exit_on_sigterm()
    try:
        args.client_levels = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    except ValueError:
        raise SystemExit(f"--clients: expected a number or comma-separated numbers, got {args.clients!r}") from None
    if not args.client_levels or args.client_levels[0] < 2:
        raise SystemExit("--clients: each level must be >= 2 (one client is always measured)")
    if args.rounds < 3 or args.threads < 1 or args.requests < max(args.client_levels):
        raise SystemExit("need --rounds >= 3, --threads >= 1, --requests >= the most --clients")
    unknown = set(args.workloads.split(",")) - {"uniform", "mixed", "agent"}
    if unknown:
        raise SystemExit(f"--workloads: unknown {sorted(unknown)} (uniform, mixed, agent)")
    started = time.perf_counter()
    # The logged ONNX model does not declare `threads` in its config, so MLflow drops what `serve --threads` passes:
    # `chatpack` serves a copy that declares it (`chatpack_as_logged` serves the model as it is).
    args.served_model_uri, threads_key_added = common.with_threads_key(args.model_uri)
    if args.timeout <= 0:
        import mlflow

        args.timeout = common.request_deadline_s(mlflow.artifacts.download_artifacts(args.served_model_uri))
    servers, skipped = make_servers(args)
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    known = {"uniform": uniform_bodies, "mixed": mixed_bodies, "agent": agent_bodies}
    makers = {name: known[name] for name in args.workloads.split(",")}
    rows: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    turns: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    loads, rss = [], {}
    try:
        for s in servers:
            s.start(log_dir)
            warm_up = uniform_bodies(1, 8, 10 ** 6) + mixed_bodies(3, 8, 10 ** 6) + (
                agent_bodies(3, 8, 10 ** 6) if "agent" in makers else [])
            for body in warm_up:  # not measured
                if s.streams or not body.get("stream"):
                    chat(s.url, body, args.timeout)
            s.pause()
        for r in range(args.rounds):
            loads.append(common.loadavg())
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for w, (workload, make) in enumerate(makers.items() if not args.multi_turn_only else []):
                # Fresh prompts for every phase (the same for every server): a repeated prompt would let a server
                # with a prompt cache skip its prefill.
                phase = (r * len(makers) + w) * (len(args.client_levels) + 1)
                solo = make(args.requests, args.max_tokens, phase * 1000)
                loaded = {n: make(args.requests, args.max_tokens, (phase + 1 + i) * 1000)
                          for i, n in enumerate(args.client_levels)}
                for s in order:
                    if not s.streams and workload != "uniform":
                        continue
                    s.resume()
                    try:
                        seq, wall, others = run_load(s, solo, 1, args.timeout)
                        rows.setdefault((s.name, workload, 1), []).append(
                            load_figures(s, solo, seq, wall, None, others))
                        for n, bodies in loaded.items():
                            par, wall, others = run_load(s, bodies, n, args.timeout)
                            alone = resend_alone(s, bodies, par, args.timeout) if n == args.client_levels[-1] else None
                            rows.setdefault((s.name, workload, n), []).append(
                                load_figures(s, bodies, par, wall, alone, others))
                    finally:
                        s.pause()
                    print(f"round {r + 1}/{args.rounds} {workload} {s.name} done", file=sys.stderr, flush=True)
            for s in order if args.multi_turn else []:
                if not s.streams:
                    continue
                s.resume()
                try:
                    turns[s.name].append(conversation_turns(s, args.turn_tokens, args.timeout, r, args.think_s))
                finally:
                    s.pause()
            if args.multi_turn:
                print(f"round {r + 1}/{args.rounds} multi-turn done", file=sys.stderr, flush=True)
    finally:
        for s in servers:
            rss[s.name] = s.peak_rss_mb()
            s.stop()
    extra = {"llama-server": s.version for s in servers if s.version}
    payload = {
        "benchmark": "serve",
        "machine": {**common.machine_info(args.threads, extra), "loadavg_per_round": loads,
                    "loadavg_at_end": common.loadavg()},
        "config": {"threads": args.threads, "clients": max(args.client_levels), "client_levels": args.client_levels,
                   "requests": args.requests, "ctx_per_slot": args.ctx_per_slot,
                   "max_tokens": args.max_tokens, "turn_tokens": args.turn_tokens, "rounds": args.rounds,
                   "think_s": args.think_s, "multi_turn_only": args.multi_turn_only,
                   "timeout_s": args.timeout, "model_uri": args.model_uri,
                   "baseline_model_uri": args.baseline_model_uri or None,
                   "threads_key_added_to_a_copy": threads_key_added, "skipped": skipped,
                   "workloads": {name: {"uniform": "short prompts, greedy, whole replies",
                                        "mixed": "half streamed, a third sampled with a seed, a quarter long prompts",
                                        "agent": "a third json_schema, a third tools (tool_choice required), a third "
                                                 "plain; greedy, whole replies"}[name] for name in makers},
                   "conversations": len(CONVERSATIONS), "seconds": round(time.perf_counter() - started, 1)},
        "servers": {s.name: {"label": s.label, "command": [c.replace(str(common.ROOT) + "/", "")
                                                              for c in s.cmd],
                             "threads": s.threads, "eos_counted_by_server": s.eos_counted, "streams": s.streams,
                             "notes": s.notes, "peak_rss_mb": rss.get(s.name)} for s in servers},
        "rows": [{"server": name, "workload": workload, "clients": clients, "rounds": figures}
                 for (name, workload, clients), figures in rows.items()],
        "multi_turn": [{"server": name, "rounds": figures} for name, figures in turns.items() if figures],
        # the inexact reuse's divergence: its replies against the exact default's, turn by turn, same conversations
        "reuse_decoded_same_replies": same_conversations(turns.get("chatpack_reuse_decoded", []),
                                                         turns.get("chatpack", [])),
    }
    out = Path(args.out)
    common.write_json(out, payload)
    from benchmarks.report import serve_tables

    print(serve_tables(payload, str(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
