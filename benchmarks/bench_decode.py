"""Decode benchmark: the same prompts, greedy, interleaved across engines in one run, each engine in its own process.

    python -m benchmarks.bench_decode --fetch_run_id <bundled fetch run> [--rounds 3] [--max_new_tokens 64]

Engines: the ONNX pyfunc (mlflow.pyfunc.load_model), a raw onnxruntime-genai loop, the transformers flavour via
pyfunc, raw transformers ``generate``, and llama.cpp on the bundled GGUF when ``llama-cpp-python`` is installed.
Prints a markdown table and writes ``<out>.json`` and ``<out>.md``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works to a ten-year-old.",
    "Describe a walk through a busy market in the morning.",
    "Give me advice on learning to cook at home.",
]


def worker(engine: str, spec: dict[str, Any]) -> None:
    """Run in a child process: load one engine, answer requests from stdin, report peak RSS at the end."""
    from benchmarks.engines import ENGINES

    impl = ENGINES[engine](spec)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        ttft, total, n, text = impl.run(request["messages"], request["max_new"])
        print(json.dumps({"ttft": ttft, "total": total, "tokens": n, "text": text}), flush=True)
    from chatpack.evaluation.memory import peak_rss_mb

    print(json.dumps({"max_rss_mb": peak_rss_mb()}), flush=True)


class Worker:
    def __init__(self, engine: str, spec: dict[str, Any]):
        self.engine = engine
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_decode", "--worker", engine,
                                      "--spec", json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self._read()
        self.proc.send_signal(signal.SIGSTOP)

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.engine} worker died")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, messages, max_new: int) -> dict[str, Any]:
        """Only the engine being asked runs: the others are stopped (SIGSTOP), so idle threads of one engine
        (OpenMP spin-waits in torch, say) cannot steal CPU from the one being timed."""
        self.proc.send_signal(signal.SIGCONT)
        try:
            self.proc.stdin.write(json.dumps({"messages": messages, "max_new": max_new}) + "\n")
            self.proc.stdin.flush()
            return self._read()
        finally:
            self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> float:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
        self.proc.stdin.flush()
        rss = self._read()["max_rss_mb"]
        self.proc.wait(timeout=60)
        return rss


def summarize(samples: list[dict[str, Any]], rss: float) -> dict[str, Any]:
    decode = [(s["tokens"] - 1) / (s["total"] - s["ttft"]) for s in samples
              if s["ttft"] is not None and s["tokens"] > 1]
    return {
        "decode_tokens_per_s": statistics.median(decode) if decode else None,
        "ttft_s": statistics.median([s["ttft"] for s in samples]) if decode else None,
        "e2e_tokens_per_s": statistics.median([s["tokens"] / s["total"] for s in samples]),
        "latency_p50_s": statistics.median([s["total"] for s in samples]),
        "tokens_per_reply": statistics.mean([s["tokens"] for s in samples]),
        "peak_rss_mb": rss,
        "samples": len(samples),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| engine | decode tok/s | TTFT s | e2e tok/s | p50 latency s | peak RSS MB | x raw ORT | x llama.cpp |",
            "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for name, r in results.items():
        rows.append(f"| {name} | {fmt(r['decode_tokens_per_s'], '.1f')} | {fmt(r['ttft_s'], '.3f')} | "
                    f"{r['e2e_tokens_per_s']:.1f} | {r['latency_p50_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                    f"{fmt(r.get('x_raw_ort'), '.2f')} | {fmt(r.get('x_llama_cpp'), '.2f')} |")
    return "\n".join(rows)


def model_specs(args: argparse.Namespace) -> dict[str, Any]:
    """Local folders and model URIs; logs the two flavours into the current tracking store if not given."""
    import mlflow

    from chatpack.sources.bundled import bundled_gguf
    from chatpack.sources.fetch import fetched_model
    from steps import log_onnx_pyfunc, log_transformers

    fetched = fetched_model(args.fetch_run_id)
    spec = {"onnx_dir": str(fetched.onnx_dir), "hf_dir": str(fetched.hf_dir),
            "onnx_model_uri": args.onnx_model_uri, "transformers_model_uri": args.transformers_model_uri}
    for key, step in (("onnx_model_uri", log_onnx_pyfunc), ("transformers_model_uri", log_transformers)):
        if not spec[key]:
            assert step.main(["--fetch_run_id", args.fetch_run_id]) == 0
            spec[key] = mlflow.get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    if fetched.info["source_kind"] == "bundled":
        spec["gguf"] = str(bundled_gguf(fetched.info["source"].split(":", 1)[1])[0])
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch_run_id", help="A finished fetch_model run (the bundled model for the llama.cpp peer).")
    p.add_argument("--onnx_model_uri", default="", help="Logged ONNX pyfunc; empty = log one now.")
    p.add_argument("--transformers_model_uri", default="", help="Logged transformers model; empty = log one now.")
    p.add_argument("--engines", default="onnx_pyfunc,raw_ort,transformers_pyfunc,raw_transformers,llama_cpp",
                   help="Comma-separated engines; llama_cpp is skipped when llama-cpp-python is not installed.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds over the prompts.")
    p.add_argument("--max_new_tokens", type=int, default=64, help="New tokens per reply (greedy).")
    p.add_argument("--out", default="benchmarks/results/decode", help="Output path without extension.")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.spec))
        return 0
    if not args.fetch_run_id:
        p.error("--fetch_run_id is required")
    engines = [e for e in args.engines.split(",") if e]
    if "llama_cpp" in engines and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python not installed: skipping the llama.cpp peer", file=sys.stderr)
        engines.remove("llama_cpp")
    spec = model_specs(args)
    if "llama_cpp" in engines and "gguf" not in spec:
        engines.remove("llama_cpp")
    workers = {name: Worker(name, spec) for name in engines}
    samples: dict[str, list] = {name: [] for name in engines}
    messages = [[{"role": "user", "content": text}] for text in PROMPTS]
    for w in workers.values():  # warm-up, not measured
        w.ask(messages[0], 8)
    for r in range(args.rounds):
        for i, msg in enumerate(messages):
            order = engines[(r + i) % len(engines):] + engines[:(r + i) % len(engines)]  # rotate who goes first
            for name in order:
                samples[name].append(workers[name].ask(msg, args.max_new_tokens))
    results = {name: summarize(samples[name], workers[name].close()) for name in engines}
    for r in results.values():
        r["x_raw_ort"] = ratio(r["decode_tokens_per_s"], results.get("raw_ort", {}).get("decode_tokens_per_s"))
        r["x_llama_cpp"] = ratio(r["decode_tokens_per_s"], results.get("llama_cpp", {}).get("decode_tokens_per_s"))
    md = table(results)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"rounds": args.rounds, "max_new_tokens": args.max_new_tokens, "prompts": PROMPTS, "engines": engines}
    out.with_suffix(".json").write_text(json.dumps({"config": meta, "results": results}, indent=2))
    out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
