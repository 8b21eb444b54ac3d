"""Decode benchmark: the same prompts, greedy, every engine in its own process on the same thread count, interleaved
prompt by prompt over several rounds.

    python -m benchmarks.bench_decode --fetch_run_id <bundled fetch run> [--onnx_model_uri ...]
        [--transformers_model_uri ...] [--threads N] [--rounds 5] [--max_new_tokens 64]

Engines (``benchmarks/engines.py``): the ONNX pyfunc, a minimal onnxruntime-genai loop, the transformers flavour, raw
transformers ``generate``, llama.cpp through ``llama-cpp-python`` (optional) and llama.cpp's ``llama-server`` (when
built: ``benchmarks/build_llama_server.sh``). Only the engine being timed runs; the others are paused (SIGSTOP on
their process group). Each figure is computed per round and reported as median and min-max over the rounds.
Writes ``benchmarks/results/decode.json``; ``python -m benchmarks.report`` turns it into README's table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle works to a ten-year-old.",
    "Describe a walk through a busy market in the morning.",
    "Give me advice on learning to cook at home.",
    common.meeting_notes("Summarise the three most urgent items in one sentence each."),
]
LONG_PROMPT = len(PROMPTS) - 1  # index of the long prompt
REFERENCE = "onnx_pyfunc"
ALL_ENGINES = "onnx_pyfunc,onnx_pyfunc_as_logged,raw_ort,transformers_pyfunc,raw_transformers,llama_cpp,llama_server"
PROTOCOL = "@@bench "


def worker(engine: str, spec: dict[str, Any]) -> None:
    """Run in a child process: load one engine, answer requests from stdin, report peak RSS at the end."""
    from benchmarks.engines import ENGINES

    common.exit_on_sigterm()
    impl = ENGINES[engine](spec)
    try:
        print(PROTOCOL + json.dumps({"ready": True, "info": impl.info()}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("quit"):
                break
            sample = impl.run(request["messages"], request["max_new"])
            print(PROTOCOL + json.dumps(sample.record()), flush=True)
        print(PROTOCOL + json.dumps({"peak_rss_mb": impl.peak_rss_mb()}), flush=True)
    finally:
        impl.close()


class Worker:
    """One engine in its own process group; paused (SIGSTOP) whenever it is not the engine being timed, so idle
    threads of one engine (OpenMP spin-waits in torch, say) cannot take CPU from another."""

    def __init__(self, engine: str, spec: dict[str, Any]):
        self.engine = engine
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_decode", "--worker", engine,
                                      "--spec", json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True, cwd=common.ROOT)
        self.info = self._read()["info"]
        self._signal(signal.SIGSTOP)

    def _signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.engine} worker died (exit {self.proc.poll()})")
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])

    def ask(self, messages, max_new: int) -> dict[str, Any]:
        self._signal(signal.SIGCONT)
        try:
            self.proc.stdin.write(json.dumps({"messages": messages, "max_new": max_new}) + "\n")
            self.proc.stdin.flush()
            return self._read()
        finally:
            self._signal(signal.SIGSTOP)

    def close(self) -> float | None:
        """Stop the worker; its peak RSS in MB (None when it could not report)."""
        rss = None
        try:
            self._signal(signal.SIGCONT)
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            while rss is None:  # a reply still in flight comes first
                rss = self._read().get("peak_rss_mb")
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 (closing must not fail: the other workers still need stopping)
            pass
        finally:
            common.stop_process(self.proc, group=True)
        return rss


def round_figures(samples: list[dict[str, Any]], long_prompt: int = LONG_PROMPT) -> dict[str, float | None]:
    """One engine's figures for one round: medians over the round's prompts of each reply's figures (a median, so
    that one reply caught by another process's burst does not decide the round). Time to first token is taken over
    the short prompts; ``ttft_long_s`` is the long prompt's (prefill weighs in)."""
    streams = all(s.get("streams", True) for s in samples)
    decoding = [(s["tokens"] - 1) / (s["total_s"] - s["ttft_s"]) for s in samples
                if s["ttft_s"] is not None and s["tokens"] > 1 and s["total_s"] > s["ttft_s"]]
    short = [s["ttft_s"] for s in samples if s["ttft_s"] is not None and s.get("prompt") != long_prompt]
    long = [s["ttft_s"] for s in samples if s["ttft_s"] is not None and s.get("prompt") == long_prompt]
    return {
        "decode_tokens_per_s": statistics.median(decoding) if decoding and streams else None,
        "ttft_s": statistics.median(short) if short else None,
        "ttft_long_s": statistics.median(long) if long else None,
        "e2e_tokens_per_s": statistics.median([s["tokens"] / s["total_s"] for s in samples]),
        "latency_s": statistics.median([s["total_s"] for s in samples]),
        "reply_tokens": statistics.mean([s["tokens"] for s in samples]),
    }


def resummarise(path: Path) -> dict[str, Any]:
    """Recompute every engine's per-round figures from the samples a results file holds."""
    payload = json.loads(path.read_text())
    for engine in payload["engines"].values():
        rounds = sorted({s["round"] for s in engine["samples"]})
        engine["rounds"] = [round_figures([s for s in engine["samples"] if s["round"] == r]) for r in rounds]
    return payload


def compare_replies(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Greedy replies compared across engines: for each pair, the share of (prompt, round) pairs with identical
    text; per engine, whether its replies are the same in every round."""
    names = list(samples)
    identical = {a: {b: sum(x["text"] == y["text"] for x, y in zip(samples[a], samples[b])) / len(samples[a])
                     for b in names} for a in names}
    stable = {}
    for name, items in samples.items():
        by_prompt: dict[int, set[str]] = {}
        for s in items:
            by_prompt.setdefault(s["prompt"], set()).add(s["text"])
        stable[name] = sum(len(texts) == 1 for texts in by_prompt.values()) / len(by_prompt)
    return {"identical_share": identical, "same_text_every_round": stable}


def model_specs(args: argparse.Namespace) -> dict[str, Any]:
    """Local folders and model URIs; logs the two flavours into the current tracking store when not given."""
    from chatpack.sources.fetch import fetched_model

    fetched = fetched_model(args.fetch_run_id)
    spec = {"onnx_dir": str(fetched.onnx_dir), "hf_dir": str(fetched.hf_dir), "threads": args.threads,
            "onnx_model_uri": args.onnx_model_uri, "transformers_model_uri": args.transformers_model_uri,
            "gguf": common.bundled_gguf_path() if fetched.info.get("source_kind") == "bundled" else None,
            "llama_server": common.find_llama_server(args.llama_server or None)}
    for key, module in (("onnx_model_uri", "log_onnx_pyfunc"), ("transformers_model_uri", "log_transformers")):
        if not spec[key]:
            import importlib

            import mlflow

            step = importlib.import_module(f"steps.{module}")
            assert step.main(["--fetch_run_id", args.fetch_run_id]) == 0
            spec[key] = mlflow.get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    # The logged ONNX model does not declare `threads` in its config, so MLflow would drop the load-time setting:
    # the pyfunc row loads a copy that declares it; the as-logged row shows the model as it is.
    spec["onnx_model_uri_as_logged"] = spec["onnx_model_uri"]
    spec["onnx_model_uri"], spec["threads_key_added"] = common.with_threads_key(spec["onnx_model_uri"])
    return spec


def skipped_engines(engines: list[str], spec: dict[str, Any]) -> dict[str, str]:
    skipped = {}
    if "llama_cpp" in engines:
        if importlib.util.find_spec("llama_cpp") is None:
            skipped["llama_cpp"] = "llama-cpp-python not installed"
        elif not spec.get("gguf"):
            skipped["llama_cpp"] = "no GGUF (the fetch run is not the bundled model)"
    if "llama_server" in engines:
        if not spec.get("llama_server"):
            skipped["llama_server"] = "llama-server not built (benchmarks/build_llama_server.sh)"
        elif not spec.get("gguf"):
            skipped["llama_server"] = "no GGUF (the fetch run is not the bundled model)"
    return skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch_run_id", default="demo", type=common.fetch_run_arg,
                   help="A finished fetch_model run (bundled model: the llama.cpp peers need its GGUF).")
    p.add_argument("--onnx_model_uri", default="", help="Logged ONNX pyfunc; empty = log one now.")
    p.add_argument("--transformers_model_uri", default="", help="Logged transformers model; empty = log one now.")
    p.add_argument("--engines", default=ALL_ENGINES, help="Comma-separated engines (missing llama.cpp ones are skipped "
                                                          "and recorded as such).")
    p.add_argument("--threads", type=int, default=common.physical_cores(),
                   help="Compute threads for every engine (default: physical cores).")
    p.add_argument("--rounds", type=int, default=5, help="Interleaved rounds over the prompts (>= 3).")
    p.add_argument("--max_new_tokens", type=int, default=64, help="New tokens per reply (greedy).")
    p.add_argument("--llama_server", default="", help="llama-server binary (default: $LLAMA_SERVER, the build "
                                                      "script's folder, PATH).")
    p.add_argument("--out", default=str(common.RESULTS / "decode.json"), help="Results JSON.")
    p.add_argument("--resummarise", action="store_true",
                   help="Only recompute the per-round figures of --out from the samples it holds.")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.exit_on_sigterm()
    if args.worker:
        worker(args.worker, json.loads(args.spec))
        return 0
    if args.resummarise:
        out = Path(args.out)
        payload = resummarise(out)
        common.write_json(out, payload)
        from benchmarks.report import decode_tables

        print(decode_tables(payload, str(out)))
        return 0
    if not args.fetch_run_id:
        raise SystemExit("--fetch_run_id: required (a fetch_model run id, or demo)")
    if args.rounds < 3 or args.threads < 1:
        raise SystemExit("--rounds must be >= 3 and --threads >= 1")
    started = time.perf_counter()
    spec = model_specs(args)
    requested = [e for e in args.engines.split(",") if e]
    skipped = skipped_engines(requested, spec)
    engines = [e for e in requested if e not in skipped]
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    workers: dict[str, Worker] = {}
    try:
        for name in engines:
            workers[name] = Worker(name, spec)
        messages = [[{"role": "user", "content": text}] for text in PROMPTS]
        for w in workers.values():  # warm-up, not measured
            w.ask(messages[0], 8)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
        loads, others = [], []
        for r in range(args.rounds):
            loads.append(common.loadavg())
            meter = common.CpuMeter([w.proc.pid for w in workers.values()]).start()
            for i, msg in enumerate(messages):
                k = (r * len(messages) + i) % len(engines)
                for name in engines[k:] + engines[:k]:  # rotate who goes first
                    sample = workers[name].ask(msg, args.max_new_tokens)
                    samples[name].append({"round": r, "prompt": i, "streams": workers[name].info["streams"], **sample})
                print(f"round {r + 1}/{args.rounds} prompt {i + 1}/{len(messages)}", file=sys.stderr, flush=True)
            others.append(meter.stop())
    finally:
        rss = {name: w.close() for name, w in workers.items()}
    results = {}
    for name in engines:
        rounds = [round_figures([s for s in samples[name] if s["round"] == r]) for r in range(args.rounds)]
        results[name] = {**workers[name].info, "peak_rss_mb": rss[name], "rounds": rounds, "samples": samples[name]}
    extra = {"llama-server": common.llama_server_version(spec["llama_server"])} if spec.get("llama_server") else {}
    payload = {
        "benchmark": "decode",
        "machine": {**common.machine_info(args.threads, extra), "loadavg_per_round": loads,
                    "other_cpu_share_per_round": others,
                    "loadavg_at_end": common.loadavg()},
        "config": {"threads": args.threads, "rounds": args.rounds, "max_new_tokens": args.max_new_tokens,
                   "greedy": True, "prompts": PROMPTS, "engines": engines, "skipped": skipped,
                   "reference": REFERENCE if REFERENCE in engines else (engines[0] if engines else None),
                   "model": {"onnx_model_uri": spec["onnx_model_uri_as_logged"],
                             "threads_key_added_to_a_copy": spec["threads_key_added"],
                             "transformers_model_uri": spec["transformers_model_uri"],
                             "gguf": Path(spec["gguf"]).name if spec.get("gguf") else None},
                   "seconds": round(time.perf_counter() - started, 1)},
        "engines": results,
        "replies": compare_replies(samples) if engines else {},
    }
    out = Path(args.out)
    common.write_json(out, payload)
    from benchmarks.report import decode_tables

    print(decode_tables(payload, str(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
