"""Prompt-lookup speculation: decode speed and reply identity with drafts of 0 (off), 4 and 8 tokens.

    python -m benchmarks.bench_speculation --onnx_dir <ONNX folder> [--threads N] [--rounds 3] [--max_tokens 128]

Two prompt sets, one request at a time (speculation applies to a lone greedy request): ``rewrite`` (rewrite, copy-edit
and extract prompts whose replies repeat the prompt's text, where drafts should be taken) and ``chat`` (open
questions). Engines are made once each, in this process, on the same threads; rounds interleave the settings prompt
by prompt; every request starts with no cached prefix. Reports completion tokens per second of wall time (prefill
included) with median and range, the share of drafted tokens taken, and how many replies are identical to the
no-speculation reply. Writes ``benchmarks/results/speculation.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks import common

PARAGRAPH = ("our team have shipped the new billing dashboard last week, it show invoices per customer and per month. "
             "The old report will be turned off on 1 March, after that date finance should use the dashboard only. "
             "If you find a bug, tell Maria Lopez or open a ticket in the BILL project.")
PROMPTS = {
    "rewrite": [f"Rewrite the following text with correct grammar. Keep everything else the same.\n\n{PARAGRAPH}",
                f"Copy this text but replace 'dashboard' with 'portal':\n\n{PARAGRAPH}",
                f"Extract every sentence that mentions a person or a date, word for word:\n\n{PARAGRAPH}"],
    "chat": ["Write a short poem about the sea.", "Give me three tips for learning to cook.", "Why is the sky blue?"],
}
DRAFTS = (0, 4, 8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx_dir", default="demo", type=common.onnx_dir_arg,
                   help="An onnxruntime-genai folder, a logged ONNX model (models:/...) or demo (the default: the ONNX "
                        "model `make demo` registered).")
    p.add_argument("--threads", type=int, default=common.physical_cores(), help="Intra-op threads for every setting.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (>= 3).")
    p.add_argument("--max_tokens", type=int, default=128, help="Reply budget per request.")
    p.add_argument("--out", default=str(common.RESULTS / "speculation.json"), help="Results JSON.")
    args = p.parse_args(argv)
    from chatpack.engine.chat_engine import OnnxChatEngine
    from chatpack.protocol.chat_request import GenerationOptions

    engines = {k: OnnxChatEngine(args.onnx_dir, threads=args.threads, speculate=k) for k in DRAFTS}
    options = GenerationOptions(max_tokens=args.max_tokens)
    rates = {(s, k): [] for s in PROMPTS for k in DRAFTS}
    texts: dict[tuple[str, int, int], str] = {}
    failures = 0
    for rnd in range(args.rounds):
        for name, prompts in PROMPTS.items():
            for i, prompt in enumerate(prompts):
                for k, engine in engines.items():
                    engine.batch.rows[:] = [type(row)() for row in engine.batch.rows]  # no cached prefix
                    ids = engine.encode_chat([{"role": "user", "content": prompt}])
                    try:
                        start = time.perf_counter()
                        reply = engine.complete(ids, options)
                        rates[(name, k)].append(reply.completion_tokens / (time.perf_counter() - start))
                        texts[(name, k, i)] = reply.text
                    except Exception:  # counted, never assumed away
                        failures += 1
    rows = []
    for (name, k), values in rates.items():
        base = statistics.median(rates[(name, 0)])
        same = sum(texts.get((name, k, i)) == texts.get((name, 0, i)) for i in range(len(PROMPTS[name])))
        rows.append({"prompts": name, "draft": k, "tok_s": statistics.median(values), "tok_s_min": min(values),
                     "tok_s_max": max(values), "x_off": statistics.median(values) / base,
                     "same_reply_as_off": f"{same}/{len(PROMPTS[name])}"})
    stats = {k: {"drafted": e.stats["drafted"], "accepted": e.stats["accepted"]} for k, e in engines.items()}
    result = {"benchmark": "speculation", "machine": common.machine_info(args.threads), "threads": args.threads,
              "rounds": args.rounds, "max_tokens": args.max_tokens, "failures": failures, "rows": rows,
              "draft_stats": stats}
    print(f"{'prompts':8} {'draft':>5} {'tok/s (min-max)':>22} {'x off':>6} {'same reply':>10}")
    for r in rows:
        print(f"{r['prompts']:8} {r['draft']:>5} {r['tok_s']:8.1f} ({r['tok_s_min']:.1f}-{r['tok_s_max']:.1f})"
              f" {r['x_off']:6.2f} {r['same_reply_as_off']:>10}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
