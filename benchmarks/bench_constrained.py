"""Constrained-decoding benchmark: decode tokens/s with and without an LLGuidance constraint, on the same prompts,
the same model and the same thread count, interleaved over several rounds, one request at a time and in a batch;
and how many tokens each model pass yields with the grammar's fast-forward on and off.

    python -m benchmarks.bench_constrained --fetch_run_id <bundled fetch run> [--threads N] [--rounds 3] [--batch 8]
    python -m benchmarks.bench_constrained --onnx_dir <onnxruntime-genai model folder>

Workloads (each prompt decoded greedily unconstrained and constrained, the prompt ids the same in both modes):

- ``json_schema``: the structured-output cases (``benchmarks/structured_cases.py``) with their JSON schema;
- ``tools``: the same prompts with two tools and ``tool_choice: required`` (the tools' system prompt in both runs);
- ``permissive``: a regex that allows any text, so both runs give the same tokens: the constraint's own cost;
- ``long_keys``: meeting-planning prompts answered under one schema of six required properties with long
  snake_case names (31-40 characters) and short values (small integers, booleans, a three-way enum): most of the
  reply is forced by the grammar, the case fast-forward is for.

Figures, each the median and min-max over the rounds (``--rounds`` >= 3), failures (a call that raised) counted per
mode and round, never folded into the figures:

- **alone**: the requests one at a time, each prompt unconstrained and constrained back to back, the order
  alternating prompt by prompt and round by round. Decode tokens/s is (tokens - 1) / (time from the first token to
  the last), each summed over a round's prompts; TTFT is the median over the prompts.
- **batch-N** (``--batch``, default 8; 1 turns it off): the same requests (repeated in order up to N when there are
  fewer), all unconstrained or all constrained, sent from N threads at once (each thread takes the next request when
  its reply ends), so they join the engine's continuous batch; which mode goes first alternates by round. Aggregate
  decode tokens/s is the sum over replies of (tokens - 1), divided by (wall time from the first call to the last
  token, minus the median TTFT of the run), the same for both modes. ``largest_batch`` (``engine.stats``, reset
  before each run) and ``mean_batch`` (rows per decode step) show the rows were batched; both count decode steps
  only: a constrained row's fast-forward passes run one row at a time (``steps`` and ``forced_passes`` of the run
  are recorded too), so a constrained run whose replies the grammar forces whole may show no decode step at all.
- **ratio**: constrained / unconstrained decode tokens/s of the same round, for alone and batch-N alike.
- **fast-forward** (``--ff_workloads``, default ``long_keys``): each prompt constrained, alone, with the engine's
  fast-forward on and off (``engine.batch.fast_forward``, the switch ``OnnxChatEngine(fast_forward=...)`` sets,
  flipped between requests on one engine so that both modes share its weights and caches), the order alternating.
  Per round: reply tokens, model passes (decode steps + fast-forward passes, ``engine.stats`` ``steps`` +
  ``forced_passes``; the prompt passes, the same in both modes, are not counted), tokens per pass ((reply tokens - 1
  per reply) / passes: the first token comes from the prompt pass; 1.0 at most with fast-forward off), forced tokens
  taken (``forced_taken``), wall time (call to last token, summed over prompts), the speedup (wall off / wall on) and
  whether every reply is the same text on and off (it must be: fast-forward only changes how many tokens a pass
  feeds).

Writes ``benchmarks/results/constrained.json`` (``--out``) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.structured_cases import BOOL, CASES, TOOLS, obj

PERMISSIVE_REGEX = r"(.|\n)*"
LONG_KEYS_SCHEMA = obj({
    "number_of_participants_expected": {"type": "integer", "minimum": 1, "maximum": 40},
    "is_the_large_conference_room_required": BOOL,
    "preferred_catering_option_for_lunch": {"enum": ["none", "sandwiches", "pizza"]},
    "requires_projector_and_video_link": BOOL,
    "number_of_parking_spaces_to_reserve": {"type": "integer", "minimum": 0, "maximum": 9},
    "should_send_calendar_invitation_reminder": BOOL,
})
LONG_KEYS_PROMPTS = [
    "Plan our quarterly review: twelve people, two of them remote, lunch included, slides on a projector. Answer "
    "with the meeting's requirements as JSON.",
    "Plan a small design workshop for five people in person, no food, whiteboards only. Answer with the meeting's "
    "requirements as JSON.",
    "Plan the all-hands for thirty people with pizza and a video link for the other office. Answer with the "
    "meeting's requirements as JSON.",
    "Plan a job interview with three interviewers and one candidate who drives in. Answer with the meeting's "
    "requirements as JSON.",
    "Plan a board meeting of eight people with sandwiches, two guests arriving by car. Answer with the meeting's "
    "requirements as JSON.",
    "Plan a quick stand-up for six people, nothing to eat, everyone in the office. Answer with the meeting's "
    "requirements as JSON.",
]
WORKLOADS = ("json_schema", "tools", "permissive", "long_keys")
MODES = ("unconstrained", "constrained")


def requests(workload: str, prompts: int) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """(messages, reply-shape fields) for the first ``prompts`` cases of ``workload``."""
    if workload == "long_keys":
        schema = {"response_format": {"type": "json_schema", "json_schema": {"name": "meeting",
                                                                            "schema": LONG_KEYS_SCHEMA}}}
        return [([{"role": "user", "content": p}], schema) for p in LONG_KEYS_PROMPTS[:prompts]]
    fields = {"json_schema": lambda s: {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": s}}}, "tools": lambda s: {"tools": TOOLS, "tool_choice": "required"},
              "permissive": lambda s: {}}[workload]
    return [([{"role": "user", "content": prompt}], fields(schema)) for prompt, schema in CASES[:prompts]]


def prepare(engine: Any, workload: str, prompts: int, max_new_tokens: int) -> list[tuple[list[int], Any, Any]]:
    """(prompt ids, unconstrained options, constrained options) per request of ``workload``."""
    from chatpack.engine.guidance import build
    from chatpack.protocol.chat_request import GenerationOptions, parse_request
    from chatpack.protocol.reply_format import Guidance

    prepared = []
    for messages, fields in requests(workload, prompts):
        request = parse_request({"messages": messages, **fields})
        guidance = Guidance("regex", PERMISSIVE_REGEX) if workload == "permissive" else build(request.reply_format)
        base = GenerationOptions(max_tokens=max_new_tokens)
        prepared.append((engine.encode_chat(request.messages, request.reply_format), base,
                         dataclasses.replace(base, guidance=guidance)))
    return prepared


def timed(engine: Any, ids: list[int], options: Any) -> dict[str, Any]:
    """One reply: tokens, seconds from the call to the first token (``ttft_s``), from the first token to the last
    (``decode_s``), from the call to the last (``wall_s``), its text and finish reason; ``error`` when it raised."""
    from chatpack.engine.chat_engine import StreamState

    state, start, first, pieces, error = StreamState(len(ids)), time.perf_counter(), None, [], None
    try:
        for piece in engine.stream(ids, options, state):
            first = first or time.perf_counter()
            pieces.append(piece)
    except Exception as exc:  # counted as a failure of its mode and round
        error = f"{type(exc).__name__}: {exc}"[:300]
    end = time.perf_counter()
    return {"tokens": state.completion_tokens, "ttft_s": (first or end) - start, "decode_s": end - (first or end),
            "wall_s": end - start, "text": "".join(pieces), "finish_reason": state.finish_reason, "error": error}


def _median(values: list[float]) -> float | None:
    return common.percentile(values, 50) if values else None


def _failures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [s["error"] for s in samples if s["error"]]
    return {"failures": len(errors), "errors": sorted(set(errors))[:3]}


def alone_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's round, requests one at a time: decode tok/s = sum(tokens - 1) / sum(first-to-last-token time)."""
    ok = [s for s in samples if not s["error"]]
    tokens, seconds = sum(max(s["tokens"] - 1, 0) for s in ok), sum(s["decode_s"] for s in ok)
    return {"decode_tok_s": tokens / seconds if seconds else None, "tokens": tokens,
            "ttft_s": _median([s["ttft_s"] for s in ok]), "requests": len(samples), **_failures(samples)}


def batch_figures(samples: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """One mode's round in a batch: decode tok/s = sum(tokens - 1) / (wall to the last token - median TTFT)."""
    ok = [s for s in samples if not s["error"]]
    tokens, ttft = sum(max(s["tokens"] - 1, 0) for s in ok), _median([s["ttft_s"] for s in ok])
    seconds = wall - (ttft or 0.0)
    return {"decode_tok_s": tokens / seconds if ok and seconds > 0 else None, "tokens": tokens, "ttft_s": ttft,
            "wall_s": wall, "requests": len(samples), **_failures(samples)}


def summarize(per_round: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Median and range over the rounds of each mode's figures, failures summed, and the per-round ratio."""
    summary = {mode: {**{key: common.spread(x.get(key) for x in rows) for key in keys},
                      "failures": sum(x["failures"] for x in rows)} for mode, rows in per_round.items()}
    ratios = [common.ratio(c["decode_tok_s"], u["decode_tok_s"])
              for u, c in zip(per_round["unconstrained"], per_round["constrained"])]
    return {"rounds": per_round, "summary": summary, "constrained_over_unconstrained": common.spread(ratios)}


def run_alone(engine: Any, prepared: list, rounds: int, label: str) -> dict[str, Any]:
    """Per round: each prompt unconstrained and constrained back to back, the order alternating."""
    per_round: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for i, (ids, free, guided) in enumerate(prepared):
            order = [("unconstrained", free), ("constrained", guided)]
            for mode, options in order if (i + r) % 2 == 0 else order[::-1]:
                samples[mode].append(timed(engine, ids, options))
        for mode in MODES:
            per_round[mode].append(alone_figures(samples[mode]))
        _progress(label, "alone", r, per_round)
    return summarize(per_round, ("decode_tok_s", "ttft_s", "tokens"))


def run_batch(engine: Any, prepared: list, rounds: int, batch: int, label: str) -> dict[str, Any]:
    """Per round: all requests unconstrained from ``batch`` threads, then all constrained (or the other way round,
    alternating by round); ``largest_batch`` and ``mean_batch`` from the engine's stats of each run."""
    work = [prepared[i % len(prepared)] for i in range(max(len(prepared), batch))]
    per_round: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            with engine.model_lock:  # between two loop turns: nothing is running
                engine.stats["largest_batch"] = 0
                before = {k: engine.stats[k] for k in ("steps", "rows_stepped", "forced_passes")}
            pick = 2 if mode == "constrained" else 1  # (ids, unconstrained options, constrained options)
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=batch) as pool:
                samples = list(pool.map(lambda item: timed(engine, item[0], item[pick]), work))
            last = max(start + s["wall_s"] for s in samples) if samples else start
            with engine.model_lock:  # the loop's turn that ended the last reply has finished its counting
                largest = engine.stats["largest_batch"]
                steps, rows, forced = (engine.stats[k] - before[k] for k in before)
            per_round[mode].append({**batch_figures(samples, last - start), "largest_batch": largest,
                                    "mean_batch": rows / steps if steps else None, "steps": steps,
                                    "forced_passes": forced})
        _progress(label, f"batch-{batch}", r, per_round)
    result = summarize(per_round, ("decode_tok_s", "ttft_s", "tokens", "wall_s", "mean_batch", "steps",
                                   "forced_passes"))
    for mode, rows in per_round.items():
        result["summary"][mode]["largest_batch"] = max(x["largest_batch"] for x in rows)
    result["batch"], result["requests"] = batch, len(work)
    return result


def run_fast_forward(engine: Any, prepared: list, rounds: int, label: str) -> dict[str, Any]:
    """Per round: each prompt constrained with fast-forward on and off, the order alternating; passes, forced tokens,
    wall time, and whether the replies are the same."""
    counted = ("steps", "forced_passes", "forced_taken")
    per_round: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    same, pairs, initial = 0, 0, engine.batch.fast_forward
    try:
        for r in range(rounds):
            samples: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            for i, (ids, _free, guided) in enumerate(prepared):
                for mode in ("on", "off") if (i + r) % 2 == 0 else ("off", "on"):
                    with engine.model_lock:
                        engine.batch.fast_forward = mode == "on"
                        before = {k: engine.stats[k] for k in counted}
                    sample = timed(engine, ids, guided)
                    with engine.model_lock:
                        sample.update({k: engine.stats[k] - before[k] for k in counted})
                    samples[mode].append(sample)
                on, off = samples["on"][-1], samples["off"][-1]
                if not on["error"] and not off["error"]:
                    pairs += 1
                    same += (on["text"], on["tokens"]) == (off["text"], off["tokens"])
            for mode, rows in samples.items():
                per_round[mode].append(ff_figures(rows))
            print(f"  {label} fast-forward round {r + 1}: " + ", ".join(
                f"{m} {per_round[m][-1]['tokens_per_pass'] or 0:.2f} tok/pass {per_round[m][-1]['wall_s']:.2f} s"
                for m in per_round), file=sys.stderr, flush=True)
    finally:
        engine.batch.fast_forward = initial
    keys = ("tokens", "passes", "steps", "forced_passes", "forced_taken", "tokens_per_pass", "wall_s")
    summary = {mode: {**{k: common.spread(x[k] for x in rows) for k in keys},
                      "failures": sum(x["failures"] for x in rows)} for mode, rows in per_round.items()}
    speedups = [common.ratio(off["wall_s"], on["wall_s"]) for on, off in zip(per_round["on"], per_round["off"])]
    return {"rounds": per_round, "summary": summary, "speedup_wall": common.spread(speedups),
            "identical_replies": {"same": same, "pairs": pairs, "all": pairs > 0 and same == pairs}}


def ff_figures(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One fast-forward mode's round: sums over the replies that did not fail."""
    ok = [s for s in samples if not s["error"]]
    sums = {k: sum(s[k] for s in ok) for k in ("tokens", "steps", "forced_passes", "forced_taken", "wall_s")}
    passes = sums["steps"] + sums["forced_passes"]
    after_first = sum(max(s["tokens"] - 1, 0) for s in ok)
    return {**sums, "passes": passes, "tokens_per_pass": after_first / passes if passes else None,
            "requests": len(samples), **_failures(samples)}


def _progress(label: str, kind: str, r: int, per_round: dict[str, list[dict[str, Any]]]) -> None:
    print(f"  {label} {kind} round {r + 1}: " + ", ".join(
        f"{m} {per_round[m][-1]['decode_tok_s'] or 0:.1f} tok/s ({per_round[m][-1]['failures']} failed)"
        for m in per_round), file=sys.stderr, flush=True)


def _cell(s: dict[str, float] | None, digits: int = 1) -> str:
    return common.fmt_summary(s, digits)


def _failed(summary: dict[str, Any]) -> str:
    counts = [summary[m].get("failures", 0) for m in MODES]
    return "" if not any(counts) else f" ({counts[0]} / {counts[1]} failed)"


def table(results: dict[str, Any]) -> str:
    """Constrained vs unconstrained decode tok/s per workload, alone and batched (median (min-max) over rounds)."""
    rows = ["| workload | mode | unconstrained decode tok/s | constrained decode tok/s | constrained / unconstrained |"
            " TTFT s (unconstrained / constrained) | largest batch (unconstrained / constrained) |",
            "|---|---|---|---|---|---|---|"]
    for workload, result in results["workloads"].items():
        parts = [("alone", result.get("alone", result))]  # results written before batch-N held one part only
        if result.get("batch"):
            parts.append((f"batch-{result['batch']['batch']}", result["batch"]))
        for mode, part in parts:
            u, c = part["summary"]["unconstrained"], part["summary"]["constrained"]
            ttft = " / ".join(f"{x['ttft_s']['median']:.3f}" if x.get("ttft_s") else "n/a" for x in (u, c))
            largest = " / ".join(str(x.get("largest_batch", 1)) for x in (u, c))
            rows.append(f"| {workload} | {mode} | {_cell(u['decode_tok_s'])} | {_cell(c['decode_tok_s'])}"
                        f"{_failed(part['summary'])} | {_cell(part['constrained_over_unconstrained'], 2)} | {ttft} | "
                        f"{largest} |")
    return "\n".join(rows)


def ff_table(results: dict[str, Any]) -> str:
    """Fast-forward on vs off: tokens per model pass, forced tokens taken, wall time, speedup, identical replies."""
    rows = ["| workload | tokens per pass (on / off) | passes (on / off) | forced tokens taken (on) | "
            "wall s (on / off) | speedup (wall off / on) | same replies on and off |", "|---|---|---|---|---|---|---|"]
    for workload, result in (results.get("fast_forward") or {}).items():
        on, off = result["summary"]["on"], result["summary"]["off"]
        same = result["identical_replies"]
        failed = "" if not (on["failures"] or off["failures"]) else \
            f" ({on['failures']} / {off['failures']} failed)"
        rows.append(f"| {workload} | {_cell(on['tokens_per_pass'], 2)} / {_cell(off['tokens_per_pass'], 2)}{failed} "
                    f"| {_cell(on['passes'], 0)} / {_cell(off['passes'], 0)} | {_cell(on['forced_taken'], 0)} | "
                    f"{_cell(on['wall_s'], 2)} / {_cell(off['wall_s'], 2)} | {_cell(result['speedup_wall'], 2)} | "
                    f"{'yes' if same['all'] else 'NO'} ({same['same']}/{same['pairs']}) |")
    return "\n".join(rows)


def onnx_dir(args: argparse.Namespace) -> str:
    from chatpack.sources.fetch import fetched_model

    return args.onnx_dir or str(fetched_model(args.fetch_run_id).onnx_dir)


def _workloads(text: str, flag: str) -> list[str]:
    names = [w for w in text.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"{flag}: unknown workload(s) {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch_run_id", default="", type=common.fetch_run_arg,
                   help="fetch_model run whose ONNX folder to load (demo: the one behind `make demo`'s ONNX model).")
    p.add_argument("--onnx_dir", default="", type=common.onnx_dir_arg,
                   help="An onnxruntime-genai folder or a logged ONNX model (models:/..., demo); with neither flag: "
                        "the ONNX model `make demo` registered.")
    p.add_argument("--threads", type=int, default=common.physical_cores(),
                   help="onnxruntime intra-op threads (default: physical cores), the same for both modes.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds over the prompts (>= 3).")
    p.add_argument("--max_new_tokens", type=int, default=64, help="New tokens per reply at most (greedy).")
    p.add_argument("--prompts", type=int, default=len(CASES),
                   help=f"Prompts per workload (at most {len(CASES)}; long_keys has {len(LONG_KEYS_PROMPTS)}).")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="Comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--batch", type=int, default=8,
                   help="Requests in flight at once for the batched runs, one thread each (1: no batched runs).")
    p.add_argument("--fast_forward", choices=("on", "off"), default="on",
                   help="The engine's fast-forward for the alone and batched runs (OnnxChatEngine(fast_forward=)).")
    p.add_argument("--ff_workloads", default="long_keys",
                   help="Comma-separated workloads measured constrained with fast-forward on and off ('' : none).")
    p.add_argument("--ff_max_new_tokens", type=int, default=128,
                   help="New tokens per reply at most in the fast-forward runs (room for a whole long_keys object).")
    p.add_argument("--out", default=str(common.RESULTS / "constrained.json"), help="Results JSON.")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse arguments the benchmark cannot measure with (SystemExit naming the flag)."""
    if not (args.fetch_run_id or args.onnx_dir):
        try:
            args.onnx_dir = common.onnx_dir_arg("demo")
        except SystemExit as exc:
            raise SystemExit(f"--onnx_dir/--fetch_run_id left out and {exc}") from None
    for flag, value, least in (("--rounds", args.rounds, 3), ("--threads", args.threads, 1),
                               ("--batch", args.batch, 1), ("--prompts", args.prompts, 1),
                               ("--max_new_tokens", args.max_new_tokens, 1),
                               ("--ff_max_new_tokens", args.ff_max_new_tokens, 1)):
        if value < least:
            raise SystemExit(f"{flag} must be >= {least} (got {value})")
    _workloads(args.workloads, "--workloads")
    _workloads(args.ff_workloads, "--ff_workloads")


def main(argv: list[str] | None = None) -> int:
    from chatpack.engine.chat_engine import OnnxChatEngine

    args = parse_args(argv)
    check_args(args)
    folder = onnx_dir(args)
    engine = OnnxChatEngine(folder, threads=args.threads, max_batch=max(8, args.batch),
                            fast_forward=args.fast_forward == "on")
    started, workloads = time.perf_counter(), {}
    try:
        for w in _workloads(args.workloads, "--workloads"):
            prepared = prepare(engine, w, args.prompts, args.max_new_tokens)
            workloads[w] = {"prompts": len(prepared), "alone": run_alone(engine, prepared, args.rounds, w)}
            if args.batch > 1:
                workloads[w]["batch"] = run_batch(engine, prepared, args.rounds, args.batch, w)
        fast_forward = {w: run_fast_forward(engine, prepare(engine, w, args.prompts, args.ff_max_new_tokens),
                                            args.rounds, w) for w in _workloads(args.ff_workloads, "--ff_workloads")}
    finally:
        engine.close()
    results: dict[str, Any] = {
        "benchmark": "constrained decoding (LLGuidance) vs unconstrained, alone and batched; fast-forward on/off",
        "machine": {**common.machine_info(args.threads), "loadavg_at_end": common.loadavg()},
        "config": {"model_dir": folder, "threads": args.threads, "rounds": args.rounds,
                   "max_new_tokens": args.max_new_tokens, "prompts": args.prompts, "decoding": "greedy",
                   "batch": args.batch, "kv_rows": engine.max_batch, "fast_forward": args.fast_forward,
                   "ff_max_new_tokens": args.ff_max_new_tokens,
                   "batch_decode_tok_s": "sum(tokens - 1) / (wall to the last token - median TTFT)",
                   "alone_decode_tok_s": "sum(tokens - 1) / sum(first-to-last-token seconds)",
                   "tokens_per_pass": "sum(tokens - 1) / (decode steps + fast-forward passes)",
                   "seconds": round(time.perf_counter() - started, 1)},
        "workloads": workloads,
        "fast_forward": fast_forward,
    }
    common.write_json(Path(args.out), results)
    print(table(results))
    if fast_forward:
        print()
        print(ff_table(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
