"""The ONNX chat engine at a model's real size: load time, resident memory, the KV layout it chose, single-stream
decode, and a long prompt in the continuous batch.

For the Phi-3-mini stand-in (``fixture:random-phi3-mini-4k``, 3.8B parameters, int4: a 2.7 GB build) this answers
the questions the 135M bundled model cannot: how much memory the engine holds beside the weights, whether a prompt
near the model's whole context joins the batch with the default settings, and what decode and prefill cost at size.
It drives :class:`~chatpack.engine.chat_engine.OnnxChatEngine` in this process (no HTTP), so the figures are the
engine's own; ``bench_serve.py`` compares servers side by side.

    python -m benchmarks.bench_engine_size --onnx_dir ~/.cache/chatpack/onnx/<key> --threads 2

Each round measures a fresh 32-token greedy reply to a short chat prompt (first token, then decode tokens/s);
then one ``--long_tokens`` prompt (default 4,000) with a 4-token reply: whether it ran in the batch, its prefill
tokens/s and the KV memory it left held. Results (JSON) are saved after every round.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks import common

logger = logging.getLogger(__name__)
PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def decode_round(engine: Any, ids: list[int], max_tokens: int) -> dict[str, Any]:
    from chatpack.engine.detokenizer import StreamState
    from chatpack.protocol.chat_request import GenerationOptions

    state = StreamState(len(ids))
    meter = common.CpuMeter([]).start()
    start, first = time.perf_counter(), None
    for _ in engine.stream(ids, GenerationOptions(max_tokens=max_tokens), state):
        first = first or time.perf_counter()
    end = time.perf_counter()
    return {"first_token_s": round(first - start, 3), "completion_tokens": state.completion_tokens,
            "decode_tok_s": round((state.completion_tokens - 1) / (end - first), 2) if end > first else None,
            "others_cpu_share": meter.stop()}


def long_prompt_round(engine: Any, tokens: int) -> dict[str, Any]:
    from chatpack.protocol.chat_request import GenerationOptions

    ids = engine.encode_text("word " * (tokens + 100))[:tokens]
    before = engine.stats["prompt_tokens"]
    meter = common.CpuMeter([]).start()
    start = time.perf_counter()
    engine.complete(ids, GenerationOptions(max_tokens=4))
    seconds = time.perf_counter() - start
    return {"prompt_tokens": len(ids), "seconds": round(seconds, 1), "prefill_tok_s": round(len(ids) / seconds, 1),
            "in_batch": engine.stats["prompt_tokens"] - before == len(ids),
            "generator_loaded": engine.genai.loaded, "others_cpu_share": meter.stop(),
            "kv_held_gib": round(engine.kv.resident_tokens * engine.kv.bytes_per_token / 2**30, 2),
            "rss_after_gib": round(rss_gib(), 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx_dir", default="demo", type=common.onnx_dir_arg,
                   help="An onnxruntime-genai folder, a logged ONNX model (models:/...) or demo (the default: the ONNX "
                        "model `make demo` registered).")
    p.add_argument("--label", default="", help="What the folder is, for the results (e.g. the fetch source).")
    p.add_argument("--threads", type=int, default=common.physical_cores(), help="onnxruntime intra-op threads.")
    p.add_argument("--rounds", type=int, default=3, help="Decode rounds (>= 3).")
    p.add_argument("--max_tokens", type=int, default=32, help="Reply tokens per decode round.")
    p.add_argument("--long_tokens", type=int, default=4000, help="The long prompt's tokens (0: skip it).")
    p.add_argument("--out", default=str(common.RESULTS / "engine-size.json"), help="Results JSON.")
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error(f"--rounds: at least 3, got {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    from chatpack.engine.chat_engine import OnnxChatEngine

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = sum(p.stat().st_size for p in Path(args.onnx_dir).glob("*.onnx*"))
    result: dict[str, Any] = {"benchmark": "engine-size", "machine": common.machine_info(args.threads),
                              "model": args.label or str(args.onnx_dir), "weights_gib": round(weights / 2**30, 2)}
    base = rss_gib()
    start = time.perf_counter()
    engine = OnnxChatEngine(args.onnx_dir, threads=args.threads)
    result |= {"load_s": round(time.perf_counter() - start, 1), "rss_before_load_gib": round(base, 2),
               "rss_after_load_gib": round(rss_gib(), 2), "rows": engine.kv.rows, "row_tokens": engine.kv.row_tokens,
               "kv_bytes_per_token": engine.kv.bytes_per_token, "kv_budget_gib": round(engine.kv_budget / 2**30, 2),
               "kv_budget_from": engine.kv_budget_reason, "rounds": []}
    out = Path(args.out)
    ids = engine.encode_chat(PROMPT)
    for number in range(1, args.rounds + 1):
        result["rounds"].append(decode_round(engine, ids, args.max_tokens))
        logger.info("round %d: %s", number, result["rounds"][-1])
        common.write_json(out, result)
    result["rss_after_decode_gib"] = round(rss_gib(), 2)
    result["decode_tok_s"] = common.spread(r["decode_tok_s"] for r in result["rounds"])
    result["first_token_s"] = common.spread(r["first_token_s"] for r in result["rounds"])
    if args.long_tokens:
        result["long_prompt"] = long_prompt_round(engine, args.long_tokens)
    result["rss_over_weights"] = round(result["rss_after_decode_gib"] / result["weights_gib"], 2)
    common.write_json(out, result)
    print(f"{result['model']}: load {result['load_s']} s, RSS {result['rss_after_load_gib']} GiB after load "
          f"({result['rss_over_weights']}x the {result['weights_gib']} GiB of weights), {result['rows']} rows x "
          f"{result['row_tokens']} tokens within {result['kv_budget_gib']} GiB ({result['kv_budget_from']})")
    print(f"decode alone: {result['decode_tok_s']} tok/s; first token {result['first_token_s']} s")
    if "long_prompt" in result:
        print(f"long prompt: {result['long_prompt']}")
    print(f"wrote {out}")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
