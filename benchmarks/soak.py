"""Soak test of ``serve``: many mixed requests against one server process, then a look at what it kept.

    python -m benchmarks.soak --model_uri <ONNX model URI> [--requests 1000] [--clients 8] [--cancel_every 10]

Starts ``python -m steps.serve`` on loopback (tracing on, as deployed), warms it up with every kind of request, then
sends ``--requests`` requests (the warm-up runs twice as many clients at once, so the server's bounded thread pools are
full before measuring): the first half one after the other, the second half from ``--clients`` concurrent
clients; every other request is streamed, every ``--cancel_every``-th streamed one is cancelled after its first
piece of text (the client closes the connection). Checks: no failed request (a cancelled one must have received
text), the server's RSS grows less than 10% from the end of the warm-up to the end, its threads and open file
descriptors come back to the warm-up level once it is idle (no leak), and (tracing on) every request, warm-up
included, is a trace in the run's own experiment ``chatpack-soak-<time>``. Prints a table and writes JSON to
``benchmarks/results/``. Bounded: each request has a timeout, the whole run ``--max_seconds``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from benchmarks.client import Reply, chat
from benchmarks.common import free_port, machine_info, model_uri_arg, percentile, stop_process, wait_for_http

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["What is the capital of France?", "Name three fruits.", "Write a haiku about rain.",
           "Explain what a CPU does in one sentence.", "Give me a synonym for happy.", "What is 12 times 7?",
           "Tell me a fun fact about owls.", "Translate 'good morning' into Spanish.", "What colour is the sky?",
           "Suggest a name for a cat.", "Why do leaves fall in autumn?", "List two planets."]
RSS_LIMIT = 0.10


def start_serve(model_uri: str, *flags: str, log: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """``python -m steps.serve`` on a free loopback port, in a process group of its own; (process, base URL) once it
    answers ``/health`` (stopped again if it never does)."""
    port = free_port()
    cmd = [sys.executable, "-m", "steps.serve", "--model_uri", model_uri, "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/health", timeout=300, proc=proc)
    except BaseException:
        stop_process(proc, group=True)
        raise
    return proc, base


def request_plan(index: int, cancel_every: int) -> dict[str, Any]:
    """The ``index``-th request: streamed every other time, every ``cancel_every``-th stream cancelled mid-way."""
    streamed = index % 2 == 0
    cancel = streamed and cancel_every > 0 and (index // 2) % cancel_every == cancel_every - 1
    body = {"messages": [{"role": "user", "content": f"{PROMPTS[index % len(PROMPTS)]} (request {index})"}],
            "max_tokens": 200 if cancel else 8 + (index % 4) * 8, "stream": streamed}
    return {"body": body, "cancel": cancel}


def cancelled_stream(url: str, body: dict[str, Any], timeout: float) -> Reply:
    """Open a stream, read until the first piece of text, then drop the connection."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    reply = Reply(streamed=True, start=time.perf_counter())
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        reply.status = resp.status
        while resp.status == 200 and reply.ttft_s is None:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                reply.ttft_s = time.perf_counter() - reply.start
        reply.ok = reply.ttft_s is not None
        reply.failure = None if reply.ok else f"http_{resp.status}" if resp.status != 200 else "no_text_before_cancel"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reply.failure, reply.detail = "connection", f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()  # the cancel: the server sees the client go away mid-stream
    reply.total_s = time.perf_counter() - reply.start
    reply.extra["cancelled"] = True
    return reply


def send(url: str, plan: dict[str, Any], timeout: float) -> Reply:
    return cancelled_stream(url, plan["body"], timeout) if plan["cancel"] else chat(url, plan["body"], timeout)


def run_phase(url: str, plans: list[dict[str, Any]], clients: int, timeout: float) -> list[Reply]:
    if clients <= 1:
        return [send(url, plan, timeout) for plan in plans]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda plan: send(url, plan, timeout), plans))


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def resources(pid: int) -> dict[str, float]:
    """The server's RSS (MB), threads and open file descriptors (sockets included), and the RSS of its child
    processes (the trace exporter), from ``/proc`` (Linux)."""
    status = _status(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    child_kb = 0
    for child in children:
        try:
            child_kb += int(_status(int(child))["VmRSS"].split()[0])
        except (OSError, KeyError):
            continue
    return {"rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1), "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "children_rss_mb": round(child_kb / 1024, 1)}


def settle(base: str, pid: int, seconds: float = 3.0) -> dict[str, float]:
    """Resources once the server is idle (no request in flight) and has had ``seconds`` to close what it closes; the
    fewest threads and descriptors of a few looks (a trace being written holds a journal file for a moment)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and json.loads(urlopen(base + "/health", timeout=5).read())["in_flight"]:
        time.sleep(0.2)
    time.sleep(seconds)
    looks = [resources(pid) for _ in range(5) if not time.sleep(0.5)]
    return {key: min(look[key] for look in looks) for key in looks[0]}


def summary(name: str, replies: list[Reply], seconds: float) -> dict[str, Any]:
    done = [r.total_s * 1000 for r in replies if r.ok and not r.extra.get("cancelled")]
    failures: dict[str, int] = {}
    for r in replies:
        if not r.ok:
            failures[r.failure or "unknown"] = failures.get(r.failure or "unknown", 0) + 1
    return {"phase": name, "requests": len(replies), "streamed": sum(r.streamed for r in replies),
            "cancelled": sum(bool(r.extra.get("cancelled")) for r in replies), "failures": sum(failures.values()),
            "failure_kinds": failures, "seconds": round(seconds, 1), "req_per_s": round(len(replies) / seconds, 2),
            "p50_ms": _round(percentile(done, 50)), "p95_ms": _round(percentile(done, 95)),
            "completion_tokens": sum(r.completion_tokens or 0 for r in replies)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def metric_total(text: str, name: str, labels: str = "") -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and labels in line and not line.startswith("#"))


def count_traces(experiment: str) -> int:
    """Traces the server wrote to ``experiment`` of the tracking store (``MLFLOW_TRACKING_URI``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    total, token = 0, None
    while found is not None:
        page = client.search_traces(locations=[found.experiment_id], max_results=500, page_token=token,
                                    include_spans=False)
        total, token = total + len(page), page.token
        if not token:
            break
    return total


def table(result: dict[str, Any]) -> str:
    rows = ["| phase | requests | streamed | cancelled | failures | req/s | p50 ms | p95 ms |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {p['phase']} | {p['requests']} | {p['streamed']} | {p['cancelled']} | {p['failures']} | "
             f"{p['req_per_s']} | {p['p50_ms']} | {p['p95_ms']} |" for p in result["phases"]]
    rows += ["", "| server | RSS MB | threads | open fds | child processes' RSS MB (trace exporter) |",
             "|---|---|---|---|---|"]
    rows += [f"| {k} | {v['rss_mb']} | {v['threads']} | {v['fds']} | {v.get('children_rss_mb')} |"
             for k, v in result["resources"].items()]
    rows += ["", *(f"- {name}: {'PASS' if ok else 'FAIL'} ({why})" for name, (ok, why) in result["checks"].items())]
    return "\n".join(rows)


def checks(phases: list[dict[str, Any]], res: dict[str, dict[str, float]], peak_rss: float,
           traces: tuple[int, int] | None = None) -> dict[str, Any]:
    """The verdicts; ``traces`` is (traces written, requests sent) when the server traced."""
    base, end = res["after warm-up"], res["end (idle)"]
    growth = end["rss_mb"] / base["rss_mb"] - 1
    failures = sum(p["failures"] for p in phases)
    verdicts = {} if traces is None else {"every request traced": (traces[0] == traces[1], "%d of %d" % traces)}
    return {**verdicts, "no failures": (failures == 0, f"{failures} failed"),
            "RSS growth < 10% after warm-up": (growth < RSS_LIMIT, f"{growth:+.1%}, peak {peak_rss:.0f} MB"),
            "no leaked threads": (end["threads"] <= base["threads"], f"{base['threads']} -> {end['threads']}"),
            "no leaked open files": (end["fds"] <= base["fds"], f"{base['fds']} -> {end['fds']}")}


def soak(args: argparse.Namespace) -> dict[str, Any]:
    started, experiment = time.monotonic(), f"chatpack-soak-{time.strftime('%Y%m%d-%H%M%S')}"
    log = tempfile.NamedTemporaryFile("w+", prefix="soak-server-", suffix=".log", delete=False)
    server = None
    try:
        # Room for the warm-up's 2 x clients at once (and cancelled streams still winding down): no 429s.
        server, base = start_serve(args.model_uri, "--queue_size", str(args.clients * 4), "--tracing",
                                   str(args.tracing).lower(), "--experiment", experiment, log=log)
        pid, url = server.pid, base + "/v1/chat/completions"
        res = {"loaded": resources(pid)}
        warm = [request_plan(i, args.cancel_every) for i in range(-args.warmup, 0)]
        run_phase(url, warm[: len(warm) // 2], 1, args.timeout)
        # Twice the clients the run will have: the server's bounded thread pools reach their size here, not later.
        run_phase(url, warm[len(warm) // 2:], args.clients * 2, args.timeout)
        res["after warm-up"] = settle(base, pid)
        peak, stop_sampling = [res["after warm-up"]["rss_mb"]], threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(0.5):
                peak.append(resources(pid)["rss_mb"])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        plans = [request_plan(i, args.cancel_every) for i in range(args.requests)]
        half, phases = args.requests // 2, []
        for name, part, clients in (("sequential", plans[:half], 1),
                                    (f"{args.clients} concurrent clients", plans[half:], args.clients)):
            if time.monotonic() - started > args.max_seconds:
                raise TimeoutError(f"soak exceeded --max_seconds {args.max_seconds}")
            start = time.perf_counter()
            replies = run_phase(url, part, clients, args.timeout)
            phases.append(summary(name, replies, time.perf_counter() - start))
            res[f"after {name}"] = resources(pid)
        stop_sampling.set()
        sampler.join()
        res["end (idle)"] = settle(base, pid)
        metrics = urlopen(base + "/metrics", timeout=10).read().decode()
    except BaseException:
        log.flush()
        print(f"server log ({log.name}), last lines:\n" + "".join(open(log.name).readlines()[-30:]), file=sys.stderr)
        raise
    finally:
        if server is not None:
            stop_process(server, timeout=180)  # SIGTERM: the server hands its last traces to the exporter first
            stop_process(server, group=True)
        log.close()
    total = warm_total = len(warm)
    total += args.requests
    traces = (count_traces(experiment), total) if args.tracing else None
    return {"model_uri": args.model_uri, "requests": args.requests, "warmup": warm_total, "clients": args.clients,
            "cancel_every": args.cancel_every, "tracing": args.tracing, "phases": phases, "resources": res,
            "peak_rss_mb": max(peak), "checks": checks(phases, res, max(peak), traces), "experiment": experiment,
            "server_metrics": {"requests_total": metric_total(metrics, "chatpack_requests_total",
                                                              'route="/v1/chat/completions"'),
                               "requests_sent": total,
                               "completion_tokens_total": metric_total(metrics, "chatpack_completion_tokens_total"),
                               "in_flight_at_end": metric_total(metrics, "chatpack_requests_in_flight")},
            "machine": machine_info(threads=os.cpu_count() or 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", default="demo", type=model_uri_arg,
                   help="The ONNX model: a models:/ or runs:/ URI, or demo (the default: the ONNX model `make demo` "
                        "registered).")
    p.add_argument("--requests", type=int, default=1000, help="Requests after the warm-up (half sequential).")
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients in the second half.")
    p.add_argument("--cancel_every", type=int, default=10, help="Cancel every n-th streamed request (0: none).")
    p.add_argument("--warmup", type=int, default=128,
                   help="Warm-up requests (half sequential, half from twice the clients at once).")
    p.add_argument("--timeout", type=float, default=120.0, help="Seconds one request may take.")
    p.add_argument("--max_seconds", type=float, default=3600.0, help="Bound on the whole run.")
    p.add_argument("--tracing", type=lambda v: v.lower() == "true", default=True, help="Serve with tracing on.")
    p.add_argument("--out", type=Path, default=RESULTS, help="Folder for the JSON result.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = soak(args)
    print(table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten {path}")
    return 0 if all(ok for ok, _ in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
