"""Constrained-decoding benchmark: decode tokens/s with and without an LLGuidance constraint, on the same prompts,
the same model and the same thread count, interleaved prompt by prompt over several rounds.

    python -m benchmarks.bench_constrained --fetch_run_id <bundled fetch run> [--threads N] [--rounds 3]
    python -m benchmarks.bench_constrained --onnx_dir <onnxruntime-genai model folder>

Workloads (each prompt decoded greedily once unconstrained and once constrained, in alternating order):

- ``json_schema``: the structured-output cases (``benchmarks/structured_cases.py``) with their JSON schema;
- ``tools``: the same prompts with two tools and ``tool_choice: required`` (the tools' system prompt in both runs);
- ``permissive``: a regex that allows any text, so both runs give the same tokens: the constraint's own cost.

Decode tokens/s is (tokens - 1) / (time from the first token to the last), summed over a round's prompts; each
figure is the median and min-max over the rounds. Writes ``benchmarks/results/constrained.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.structured_cases import CASES, obj
from chatpack.engine.chat_engine import OnnxChatEngine, StreamState
from chatpack.engine.guidance import build
from chatpack.protocol.chat_request import GenerationOptions, parse_request
from chatpack.protocol.reply_format import Guidance
from chatpack.sources.fetch import fetched_model

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a fact up",
                                           "parameters": obj({"query": {"type": "string"}})}},
         {"type": "function", "function": {"name": "calculate", "description": "Evaluate an arithmetic expression",
                                           "parameters": obj({"expression": {"type": "string"}})}}]
PERMISSIVE = Guidance("regex", r"(.|\n)*")
WORKLOADS = ("json_schema", "tools", "permissive")


def requests(workload: str, prompts: int) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """(messages, reply-shape fields) for the first ``prompts`` cases of ``workload``."""
    fields = {"json_schema": lambda s: {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": s}}}, "tools": lambda s: {"tools": TOOLS, "tool_choice": "required"},
              "permissive": lambda s: {}}[workload]
    return [([{"role": "user", "content": prompt}], fields(schema)) for prompt, schema in CASES[:prompts]]


def timed(engine: OnnxChatEngine, ids: list[int], options: GenerationOptions) -> tuple[int, float, float]:
    """(tokens, seconds from the call to the first token, seconds from the first token to the last) of one reply."""
    state, start, first = StreamState(len(ids)), time.perf_counter(), None
    for _ in engine.stream(ids, options, state):
        first = first or time.perf_counter()
    end = time.perf_counter()
    return state.completion_tokens, (first or end) - start, end - (first or end)


def run(engine: OnnxChatEngine, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """Per round: decode tokens/s of each mode over all prompts, and the median time to first token."""
    prepared, rounds, max_new_tokens = [], args.rounds, args.max_new_tokens
    for messages, fields in requests(workload, args.prompts):
        request = parse_request({"messages": messages, **fields})
        guidance = PERMISSIVE if workload == "permissive" else build(request.reply_format)
        base = GenerationOptions(max_tokens=max_new_tokens)
        prepared.append((engine.encode_chat(request.messages, request.reply_format), base,
                         dataclasses.replace(base, guidance=guidance)))
    per_round: dict[str, list[dict[str, float]]] = {"unconstrained": [], "constrained": []}
    for r in range(rounds):
        totals = {mode: [0, 0.0, []] for mode in per_round}
        for i, (ids, free, guided) in enumerate(prepared):
            order = [("unconstrained", free), ("constrained", guided)]
            for mode, options in order if (i + r) % 2 == 0 else order[::-1]:
                tokens, ttft, decode = timed(engine, ids, options)
                totals[mode][0] += max(tokens - 1, 0)
                totals[mode][1] += decode
                totals[mode][2].append(ttft)
        for mode, (tokens, seconds, ttfts) in totals.items():
            per_round[mode].append({"decode_tok_s": tokens / seconds if seconds else 0.0, "tokens": tokens,
                                    "ttft_s": sorted(ttfts)[len(ttfts) // 2]})
        print(f"  {workload} round {r + 1}: " + ", ".join(
            f"{m} {per_round[m][-1]['decode_tok_s']:.1f} tok/s" for m in per_round), file=sys.stderr)
    summary = {mode: {key: common.spread(x[key] for x in rows) for key in ("decode_tok_s", "ttft_s", "tokens")}
               for mode, rows in per_round.items()}
    ratios = [c["decode_tok_s"] / u["decode_tok_s"] for u, c in zip(per_round["unconstrained"],
                                                                    per_round["constrained"])]
    return {"rounds": per_round, "summary": summary, "constrained_over_unconstrained": common.spread(ratios)}


def table(results: dict[str, Any]) -> str:
    rows = ["| workload | unconstrained decode tok/s | constrained decode tok/s | constrained / unconstrained | "
            "TTFT s (unconstrained / constrained) |", "|---|---|---|---|---|"]

    def cell(s: dict[str, float], digits: int = 1) -> str:
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    for workload, result in results["workloads"].items():
        u, c = result["summary"]["unconstrained"], result["summary"]["constrained"]
        rows.append(f"| {workload} | {cell(u['decode_tok_s'])} | {cell(c['decode_tok_s'])} | "
                    f"{cell(result['constrained_over_unconstrained'], 2)} | "
                    f"{u['ttft_s']['median']:.3f} / {c['ttft_s']['median']:.3f} |")
    return "\n".join(rows)


def onnx_dir(args: argparse.Namespace) -> str:
    return args.onnx_dir or str(fetched_model(args.fetch_run_id).onnx_dir)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch_run_id", default="", help="fetch_model run whose ONNX folder to load.")
    p.add_argument("--onnx_dir", default="", help="An onnxruntime-genai model folder (instead of --fetch_run_id).")
    p.add_argument("--threads", type=int, default=common.physical_cores(),
                   help="onnxruntime intra-op threads (default: physical cores), the same for both modes.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds over the prompts (>= 3).")
    p.add_argument("--max_new_tokens", type=int, default=64, help="New tokens per reply at most (greedy).")
    p.add_argument("--prompts", type=int, default=len(CASES), help=f"Prompts per workload (at most {len(CASES)}).")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="Comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--out", default=str(common.RESULTS / "constrained.json"), help="Results JSON.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 3 or args.threads < 1 or not (args.fetch_run_id or args.onnx_dir):
        raise SystemExit("--fetch_run_id or --onnx_dir is required; --rounds must be >= 3 and --threads >= 1")
    folder = onnx_dir(args)
    engine = OnnxChatEngine(folder, threads=args.threads)
    results: dict[str, Any] = {
        "benchmark": "constrained decoding (LLGuidance) vs unconstrained, onnxruntime-genai",
        "machine": common.machine_info(args.threads),
        "config": {"model_dir": folder, "threads": args.threads, "rounds": args.rounds,
                   "max_new_tokens": args.max_new_tokens, "prompts": min(args.prompts, len(CASES)),
                   "decoding": "greedy"},
        "workloads": {w: run(engine, w, args) for w in args.workloads.split(",")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
