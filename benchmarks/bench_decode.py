"""Decode benchmark: the same prompts, greedy, every engine in its own process on the same thread count, interleaved
prompt by prompt over several rounds.

    python -m benchmarks.bench_decode --fetch_run_id <fetch run> [--onnx_model_uri ...]
        [--transformers_model_uri ...] [--gguf Q4_0=a.gguf --gguf Q8_0=b.gguf] [--threads N] [--rounds 5]
        [--max_new_tokens 64] [--timeout 0]

Engines (``benchmarks/engines.py``): the ONNX pyfunc, a minimal onnxruntime-genai loop, the transformers flavour, raw
transformers ``generate``, llama.cpp through ``llama-cpp-python`` (optional) and llama.cpp's ``llama-server`` (when
built: ``benchmarks/build_llama_server.sh``). Only the engine being timed runs; the others are paused (SIGSTOP on
their process group). Each figure is computed per round and reported as median and min-max over the rounds.
The llama.cpp engines run once per ``--gguf`` (default: the bundled model's own GGUF), named ``llama_server@<label>``.
A model is logged only for an engine that runs it; request deadlines scale with the model's ONNX weights.
Writes ``benchmarks/results/decode.json`` after every round (``"complete": false`` until the last);
``python -m benchmarks.report`` turns it into the docs' table.
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
GGUF_ENGINES = ("llama_cpp", "llama_server")


def worker(engine: str, spec: dict[str, Any]) -> None:
    """Run in a child process: load one engine, answer requests from stdin, report peak RSS at the end."""
    from benchmarks.engines import ENGINES

    common.exit_on_sigterm()
    kind, _, label = engine.partition("@")
    if kind in GGUF_ENGINES and label:
        spec = {**spec, "gguf": spec["ggufs"][label], "gguf_label": label}
    impl = ENGINES[kind](spec)
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
    long = [s for s in samples if s["ttft_s"] is not None and s.get("prompt") == long_prompt]
    prefill = [s["prompt_tokens"] / s["ttft_s"] for s in long if s.get("prompt_tokens") and streams]
    return {
        "decode_tokens_per_s": statistics.median(decoding) if decoding and streams else None,
        "ttft_s": statistics.median(short) if short else None,
        "ttft_long_s": statistics.median([s["ttft_s"] for s in long]) if long else None,
        "prefill_tokens_per_s": statistics.median(prefill) if prefill else None,
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


def model_specs(args: argparse.Namespace, engines: list[str]) -> dict[str, Any]:
    """Local folders and model URIs; logs a flavour into the current tracking store only when it is not given and an
    engine in ``engines`` runs it."""
    from chatpack.sources.fetch import fetched_model

    fetched = fetched_model(args.fetch_run_id)
    spec = {"onnx_dir": str(fetched.onnx_dir), "hf_dir": str(fetched.hf_dir), "threads": args.threads,
            "onnx_model_uri": args.onnx_model_uri, "transformers_model_uri": args.transformers_model_uri,
            "ggufs": common.gguf_files(args.gguf, fetched.info.get("source_kind") == "bundled"),
            "llama_server": common.find_llama_server(args.llama_server or None)}
    spec["timeout_s"] = args.timeout if args.timeout > 0 else common.request_deadline_s(spec["onnx_dir"])
    kinds = {e.partition("@")[0] for e in engines}
    needs = {"onnx_model_uri": bool(kinds & {"onnx_pyfunc", "onnx_pyfunc_as_logged"}),
             "transformers_model_uri": "transformers_pyfunc" in kinds}
    for key, module in (("onnx_model_uri", "log_onnx_pyfunc"), ("transformers_model_uri", "log_transformers")):
        if not spec[key] and needs[key]:
            import importlib

            import mlflow

            step = importlib.import_module(f"steps.{module}")
            assert step.main(["--fetch_run_id", args.fetch_run_id]) == 0
            spec[key] = mlflow.get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
    # The logged ONNX model does not declare `threads` in its config, so MLflow would drop the load-time setting:
    # the pyfunc row loads a copy that declares it; the as-logged row shows the model as it is.
    spec["onnx_model_uri_as_logged"] = spec["onnx_model_uri"]
    spec["threads_key_added"] = False
    if "onnx_pyfunc" in kinds:
        spec["onnx_model_uri"], spec["threads_key_added"] = common.with_threads_key(spec["onnx_model_uri"])
    return spec


def llama_bench(binary: str, gguf: str, threads: int, prompt_tokens: int, gen_tokens: int) -> dict[str, float]:
    """One run of llama.cpp's own ``llama-bench`` (prefill of ``prompt_tokens``, decode of ``gen_tokens``, 1
    repetition): its tokens/s for each, as llama.cpp measures them (no HTTP, no chat template)."""
    out = subprocess.run([binary, "-m", gguf, "-t", str(threads), "-p", str(prompt_tokens), "-n", str(gen_tokens),
                          "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=3600, check=True).stdout
    figures = {}
    for test in json.loads(out):
        key = "prefill_tokens_per_s" if test["n_gen"] == 0 else "decode_tokens_per_s"
        figures[key] = float(test["avg_ts"])
    return figures


def find_llama_bench(server: str | None) -> str | None:
    """``llama-bench`` beside the ``llama-server`` binary (``TARGETS=... build_llama_server.sh`` builds both)."""
    candidate = Path(server).with_name("llama-bench") if server else None
    return str(candidate) if candidate and candidate.is_file() else None


def expand_engines(requested: list[str], ggufs: dict[str, str]) -> list[str]:
    """The llama.cpp engines once per GGUF (``llama_server@Q4_0``, ...); the others as they are."""
    engines = []
    for name in requested:
        if name in GGUF_ENGINES and ggufs:
            engines += [f"{name}@{label}" for label in ggufs]
        else:
            engines.append(name)
    return engines


def skipped_engines(engines: list[str], spec: dict[str, Any]) -> dict[str, str]:
    skipped = {}
    no_gguf = "no GGUF (--gguf; the default is the bundled model's own)"
    for name in engines:
        kind = name.partition("@")[0]
        if kind == "llama_cpp" and importlib.util.find_spec("llama_cpp") is None:
            skipped[name] = "llama-cpp-python not installed"
        elif kind == "llama_server" and not spec.get("llama_server"):
            skipped[name] = "llama-server not built (benchmarks/build_llama_server.sh)"
        elif kind in GGUF_ENGINES and not spec["ggufs"]:
            skipped[name] = no_gguf
    return skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch_run_id", default="demo",
                   help="A finished fetch_model run, or demo (the one behind `make demo`'s ONNX model).")
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
    p.add_argument("--gguf", action="append", default=[],
                   help="[LABEL=]PATH of a GGUF for the llama.cpp engines; repeat for several (each gets its own "
                        "engine, llama_server@LABEL). LABEL defaults to the quantisation type in the file name. "
                        "Default: the bundled model's own Q4_1 GGUF when the fetch run is the bundled model.")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="Per-request deadline in seconds for the HTTP engines; 0 = 120 s scaled by the ONNX weights' "
                        "size over 300 MB.")
    p.add_argument("--llama_bench", type=lambda v: v.lower() == "true", default=True,
                   help="true (default): also run llama.cpp's llama-bench on each GGUF once per round (prefill of the "
                        "long prompt's token count, decode of --max_new_tokens), when it is built beside llama-server.")
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
    args.fetch_run_id = common.fetch_run_arg(args.fetch_run_id)  # here, not as an argparse type: workers skip it
    if args.rounds < 3 or args.threads < 1:
        raise SystemExit("--rounds must be >= 3 and --threads >= 1")
    started = time.perf_counter()
    requested = [e for e in args.engines.split(",") if e]
    spec = model_specs(args, requested)
    expanded = expand_engines(requested, spec["ggufs"])
    skipped = skipped_engines(expanded, spec)
    engines = [e for e in expanded if e not in skipped]
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    out = Path(args.out)
    workers: dict[str, Worker] = {}
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    loads, others = [], []
    rss: dict[str, float | None] = {}
    bench_binary = find_llama_bench(spec["llama_server"]) if args.llama_bench else None
    spec["llama_bench"] = {label: [] for label in spec["ggufs"]} if bench_binary else {}
    try:
        for name in engines:
            workers[name] = Worker(name, spec)
        messages = [[{"role": "user", "content": text}] for text in PROMPTS]
        for w in workers.values():  # warm-up, not measured
            w.ask(messages[0], 8)
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
            long_tokens = next((s.get("prompt_tokens") for items in samples.values() for s in items
                                if s["prompt"] == LONG_PROMPT and s.get("prompt_tokens")), 400)
            for label, path in spec["ggufs"].items() if bench_binary else ():  # the workers are paused meanwhile
                spec["llama_bench"][label].append(llama_bench(bench_binary, path, args.threads, long_tokens,
                                                              args.max_new_tokens))
            if r + 1 < args.rounds:  # what is measured so far survives a later failure
                common.write_json(out, results_payload(args, spec, engines, skipped, workers, samples, rss, loads,
                                                       others, started, complete=False))
    finally:
        rss = {name: w.close() for name, w in workers.items()}
    payload = results_payload(args, spec, engines, skipped, workers, samples, rss, loads, others, started)
    common.write_json(out, payload)
    from benchmarks.report import decode_tables

    print(decode_tables(payload, str(out)))
    return 0


def results_payload(args, spec, engines, skipped, workers, samples, rss, loads, others, started,
                    complete: bool = True) -> dict[str, Any]:
    """The results file's content from what has been measured so far (every finished round)."""
    done = sorted({s["round"] for items in samples.values() for s in items})
    results = {}
    for name in engines:
        rounds = [round_figures([s for s in samples[name] if s["round"] == r]) for r in done]
        results[name] = {**workers[name].info, "peak_rss_mb": rss.get(name), "rounds": rounds,
                         "samples": samples[name]}
    extra = {"llama-server": common.llama_server_version(spec["llama_server"])} if spec.get("llama_server") else {}
    return {
        "benchmark": "decode",
        "complete": complete,
        "machine": {**common.machine_info(args.threads, extra), "loadavg_per_round": loads,
                    "other_cpu_share_per_round": others,
                    "loadavg_at_end": common.loadavg()},
        "config": {"threads": args.threads, "rounds": len(done) if not complete else args.rounds,
                   "max_new_tokens": args.max_new_tokens, "timeout_s": round(spec["timeout_s"], 1),
                   "greedy": True, "prompts": PROMPTS, "engines": engines, "skipped": skipped,
                   "reference": REFERENCE if REFERENCE in engines else (engines[0] if engines else None),
                   "model": {"onnx_model_uri": spec["onnx_model_uri_as_logged"] or None,
                             "threads_key_added_to_a_copy": spec["threads_key_added"],
                             "transformers_model_uri": spec["transformers_model_uri"] or None,
                             "ggufs": {label: Path(path).name for label, path in spec["ggufs"].items()}},
                   "seconds": round(time.perf_counter() - started, 1)},
        "engines": results,
        "llama_bench": spec.get("llama_bench") or {},
        "replies": compare_replies(samples) if engines and done else {},
    }


if __name__ == "__main__":
    sys.exit(main())
