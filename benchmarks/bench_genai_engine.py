"""onnxruntime-genai's own batching Engine (``og.Engine``) against chatpack's continuous batching, on CPU.

    python -m benchmarks.bench_genai_engine --onnx_dir <ONNX folder> [--threads N] [--rounds 3] [--max_tokens 32]

Both engines load the same model folder once each, in this process, with the same intra-op threads (one inter-op
thread), and answer one short untimed pair of requests to warm up. Each round measures, engine after engine, 8 short
chat prompts sent at once (``og.Engine``: 8 requests begun before its run loop; chatpack: 8 threads calling
``complete``) and the same 8 one at a time; all greedy with a budget of ``--max_tokens``. chatpack's idle KV rows are
emptied before every measurement (no cached prefix), as the Engine keeps none across requests. Reports completion
tokens per second of wall time (prefill included) with median and range, the 8-at-once / one-at-a-time ratio,
failures, how many greedy replies are identical (whitespace-stripped text) between the engines, and whether the
Engine gives a seeded sampled request the same reply alone, again, and inside a batch (a string where the API
refuses). Writes ``benchmarks/results/genai_engine.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import common

PROMPTS = [f"Tell me one fact about the number {i}." for i in range(8)]
MODES = ("concurrent8", "sequential")
SEED = 1234


class GenaiEngine:
    """``og.Engine`` over the folder with ``threads`` intra-op threads; ``generate`` runs requests to completion."""

    def __init__(self, folder: str, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.engine = og.Engine(self.model)
        self.buffer = self.engine.create_event_buffer(64)
        self.max_batch = self.engine.get_capabilities().configured_max_batch_size

    def encode_chat(self, prompt: str) -> np.ndarray:
        text = self.tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": prompt}]),
                                                  add_generation_prompt=True)
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    def generate(self, prompts: list[np.ndarray], max_tokens: int, sample_seed: int | None = None,
                 sampled: int = -1) -> tuple[list[list[int]], int]:
        """Token ids of each prompt's reply (greedy; prompt ``sampled`` sampled with ``sample_seed``) and failures.
        All requests are begun before the run loop, so the Engine batches them (up to ``max_batch`` at a time)."""
        og, flags = self.og, self.og.EngineEventFlags
        requests, out, failures = [], [[] for _ in prompts], 0
        try:
            for i, ids in enumerate(prompts):
                requests.append(self.engine.create_request())
                options = og.TurnOptions(requests[-1])
                options.set_max_generated_tokens(max_tokens)
                options.set_do_sample(i == sampled)
                if i == sampled:
                    options.set_temperature(1.0)
                    options.set_top_k(50)
                    options.set_seed(sample_seed)  # begin_turn refuses it without dynamic batching
                requests[-1].begin_turn(ids, options)
            while self.engine.has_pending_requests():
                self.engine.run(self.buffer)
                for k in range(len(self.buffer)):
                    event = self.buffer[k]
                    index = next(j for j, r in enumerate(requests) if event.request is r)
                    if int(event.flags) & int(flags.TOKEN):
                        out[index].append(int(event.token))
                    if int(event.flags) & int(flags.FAILED):
                        failures += 1
        finally:
            for request in requests:
                try:
                    request.close()
                except RuntimeError:  # a request never begun does not belong to the Engine
                    pass
        return out, failures

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(np.asarray(ids, dtype=np.int32))


def seed_check(og_engine: GenaiEngine, prompts: list[np.ndarray], max_tokens: int) -> dict[str, object]:
    """The same seeded sampled request alone twice, then first in a batch of four: are the replies the same?"""
    try:
        alone = [og_engine.generate(prompts[:1], max_tokens, SEED, sampled=0)[0][0] for _ in range(2)]
        batched = og_engine.generate(prompts[:4], max_tokens, SEED, sampled=0)[0][0]
    except Exception as exc:  # the API cannot: say so in the results
        return {"alone_twice_equal": f"unsupported: {exc}", "alone_vs_batched_equal": f"unsupported: {exc}"}
    return {"alone_twice_equal": alone[0] == alone[1], "alone_vs_batched_equal": alone[0] == batched}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx_dir", default="demo", type=common.onnx_dir_arg,
                   help="An onnxruntime-genai folder, a logged ONNX model (models:/...) or demo (the default: the ONNX "
                        "model `make demo` registered).")
    p.add_argument("--threads", type=int, default=common.physical_cores(), help="Intra-op threads for both engines.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (>= 3 for a reported figure).")
    p.add_argument("--max_tokens", type=int, default=32, help="Reply budget per request (greedy).")
    p.add_argument("--out", default=str(common.RESULTS / "genai_engine.json"), help="Results JSON.")
    args = p.parse_args(argv)
    from chatpack.engine.chat_engine import OnnxChatEngine
    from chatpack.protocol.chat_request import GenerationOptions

    og_engine = GenaiEngine(args.onnx_dir, args.threads)
    chat = OnnxChatEngine(args.onnx_dir, threads=args.threads)
    options = GenerationOptions(max_tokens=args.max_tokens)
    og_ids = [og_engine.encode_chat(q) for q in PROMPTS]
    chat_ids = [chat.encode_chat([{"role": "user", "content": q}]) for q in PROMPTS]
    pool = ThreadPoolExecutor(len(PROMPTS))
    og_engine.generate(og_ids[:2], 4)  # untimed warm-up of each engine (first-run allocations)
    list(pool.map(lambda ids: chat.complete(ids, GenerationOptions(max_tokens=4)), chat_ids[:2]))

    def run_og(mode: str) -> tuple[int, int, list[str]]:
        batches = [og_ids] if mode == "concurrent8" else [[ids] for ids in og_ids]
        replies, failures = [], 0
        for batch in batches:
            out, failed = og_engine.generate(batch, args.max_tokens)
            replies += out
            failures += failed
        return sum(map(len, replies)), failures, [og_engine.text(r) for r in replies]

    def run_chat(mode: str) -> tuple[int, int, list[str]]:
        def one(ids: list[int]):
            try:
                return chat.complete(ids, options)
            except Exception:  # counted, never assumed away
                return None
        replies = list(pool.map(one, chat_ids)) if mode == "concurrent8" else [one(ids) for ids in chat_ids]
        done = [r for r in replies if r is not None]
        return (sum(r.completion_tokens for r in done), len(replies) - len(done),
                [r.text if r is not None else None for r in replies])

    runners = {"og.Engine": run_og, "chatpack": run_chat}
    rates = {(name, mode): [] for name in runners for mode in MODES}
    failures = {name: 0 for name in runners}
    texts: dict[tuple[str, str], list[str]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            for name, runner in runners.items():
                chat.batch.rows[:] = [type(row)() for row in chat.batch.rows]  # no cached prefix
                start = time.perf_counter()
                try:
                    tokens, failed, replies = runner(mode)
                except Exception:  # a whole measurement lost: every request in it counts as failed
                    failures[name] += len(PROMPTS)
                    continue
                rates[(name, mode)].append(tokens / (time.perf_counter() - start))
                failures[name] += failed
                texts[(name, mode)] = replies
    pool.shutdown()
    rows = []
    for name in runners:
        for mode in MODES:
            values = rates[(name, mode)]
            rows.append({"engine": name, "mode": mode, "tok_s": common.spread(values)})
        conc, seq = (common.spread(rates[(name, m)]) for m in MODES)
        rows[-2]["x_concurrent_over_sequential"] = common.ratio(conc and conc["median"], seq and seq["median"])
    same = {mode: sum(a is not None and b is not None and a.strip() == b.strip()
                      for a, b in zip(texts.get(("og.Engine", mode), []), texts.get(("chatpack", mode), [])))
            for mode in MODES}
    result = {"benchmark": "genai_engine", "machine": common.machine_info(args.threads), "threads": args.threads,
              "rounds": args.rounds, "max_tokens": args.max_tokens, "requests": len(PROMPTS),
              "og_engine_max_batch": og_engine.max_batch, "chatpack_max_batch": chat.max_batch,
              "failures": failures, "rows": rows,
              "greedy_same_reply": {mode: f"{n}/{len(PROMPTS)}" for mode, n in same.items()},
              "og_engine_seed": seed_check(og_engine, og_ids, args.max_tokens),
              "chatpack_reused_prompt_tokens": chat.stats.get("reused_tokens")}
    print(f"{'engine':10} {'mode':12} {'tok/s (min-max)':>24} {'x seq':>6} {'failures':>8}")
    for r in rows:
        s, x = r["tok_s"], r.get("x_concurrent_over_sequential")
        figure = f"{s['median']:8.1f} ({s['min']:.1f}-{s['max']:.1f})" if s else f"{'-':>8}"
        print(f"{r['engine']:10} {r['mode']:12} {figure:>24} {f'{x:.2f}' if x else '':>6} {failures[r['engine']]:>8}")
    print(f"greedy replies identical: {result['greedy_same_reply']}; og.Engine seed: {result['og_engine_seed']}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
