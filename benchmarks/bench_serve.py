"""Serving load benchmark: in-process predict vs `mlflow models serve` vs our OpenAI server, sequential and with
8 concurrent clients, on the same prompts (greedy, fixed reply budget). Loopback only, bounded in count.

    python -m benchmarks.bench_serve --model_uri models:/m-... [--requests 48] [--clients 8] [--max_tokens 32]

Prints a markdown table; writes ``<out>.json`` and ``<out>.md``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conftest import free_port, wait_for_http

PROMPTS = [f"Tell me one fact about the number {i}." for i in range(16)]


def _post(url: str, body: dict[str, Any]) -> tuple[float, dict | list]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as resp:
        reply = json.loads(resp.read())
    return time.perf_counter() - start, reply


def _text(reply: dict | list) -> str:
    reply = reply[0] if isinstance(reply, list) else reply
    return reply["choices"][0]["message"]["content"]


def _stats(name: str, latencies: list[float], wall: float, texts: list[str], reference: list[str]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {"mode": name, "requests": len(latencies), "wall_s": wall, "requests_per_s": len(latencies) / wall,
            "p50_ms": statistics.median(ordered) * 1000, "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
            "failures": 0, "identical_to_sequential": texts == reference}


def _run_http(url: str, bodies: list[dict], clients: int) -> tuple[list[float], float, list[str]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda b: _post(url, b), bodies))
    return [r[0] for r in results], time.perf_counter() - start, [_text(r[1]) for r in results]


def _server(cmd: list[str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_http(health, timeout=300, proc=proc)
    return proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", required=True, help="The ONNX pyfunc model to serve.")
    p.add_argument("--requests", type=int, default=48, help="Requests per mode.")
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients in the concurrent modes.")
    p.add_argument("--max_tokens", type=int, default=32, help="Reply budget per request (greedy).")
    p.add_argument("--out", default="benchmarks/results/serve", help="Output path without extension.")
    args = p.parse_args(argv)

    import mlflow

    bodies = [{"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": args.max_tokens}
              for i in range(args.requests)]
    model = mlflow.pyfunc.load_model(args.model_uri)
    model.predict(bodies[0])
    start, latencies, reference = time.perf_counter(), [], []
    for body in bodies:
        t0 = time.perf_counter()
        reference.append(_text(model.predict(body)))
        latencies.append(time.perf_counter() - t0)
    rows = [_stats("in-process predict, sequential", latencies, time.perf_counter() - start, reference, reference)]
    del model

    servers = {
        "mlflow models serve": ([sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model_uri,
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"], "/ping", "/invocations"),
        "chatpack serve": ([sys.executable, "-m", "steps.serve", "--model_uri", args.model_uri, "--port", "{port}",
                            "--queue_size", str(args.requests)], "/health", "/v1/chat/completions"),
    }
    for name, (cmd, health, route) in servers.items():
        port = free_port()
        proc = _server([c.replace("{port}", str(port)) for c in cmd], f"http://127.0.0.1:{port}{health}")
        try:
            url = f"http://127.0.0.1:{port}{route}"
            _post(url, bodies[0])
            for clients in (1, args.clients):
                lat, wall, texts = _run_http(url, bodies, clients)
                rows.append(_stats(f"{name}, {clients} client{'s' if clients > 1 else ''}", lat, wall, texts,
                                   reference))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    base = rows[0]["requests_per_s"]
    for row in rows:
        row["throughput_vs_in_process"] = row["requests_per_s"] / base
    md = ["| mode | requests | req/s | x in-process | p50 ms | p95 ms | identical replies |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['throughput_vs_in_process']:.2f} | "
           f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['identical_to_sequential']} |" for r in rows]
    table = "\n".join(md)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"config": vars(args), "results": rows}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
