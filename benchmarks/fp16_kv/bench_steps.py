"""fp32 vs fp16 KV cache for the builder's int4 CPU graph, run through chatpack's own KvRows (shared past/present
buffers, seqlens from the attention mask, io binding): decode-step time, fp16-vs-fp32 logits, batch invariance.

usage: python -m benchmarks.fp16_kv.bench_steps FP32_DIR FP16_DIR OUT_JSON
"""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from chatpack.engine.kv_rows import KvRows

ROOT = Path(__file__).resolve().parents[2]

fp32_dir, fp16_dir, out_json = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

THREADS, ROUNDS, STEPS = 2, int(os.environ.get("ROUNDS", 5)), 10
OFFS = (0, -3, 5, -7)  # per-row length offsets: rows of a batch have different lengths, as in service
CASES = [(L, B) for L in (300, 1000) for B in (1, 4)]
CAP = 1000 + max(OFFS) + 64

# real text as prompts: each row a different window of the repo's docs
tok = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])
ids_all = np.array(tok.encode(text).ids, np.int64)
assert len(ids_all) > 4000 + 1100, len(ids_all)
prompt_len = [1000 + d for d in OFFS]
prompts = [ids_all[1000 * r: 1000 * r + n] for r, n in enumerate(prompt_len)]
next_ids = np.array([[int(p[-1])] for p in prompts], np.int64)  # any fixed token per row

variants = {}
for name, d in (("fp32", fp32_dir), ("fp16", fp16_dir)):
    kv = KvRows(d, rows=4, row_tokens=CAP, threads=THREADS)
    variants[name] = kv
res = {"onnxruntime": ort.__version__, "threads_intra_op": THREADS, "inter_op": 1, "rounds": ROUNDS,
       "steps_per_sample": STEPS, "machine": platform.processor() or platform.machine(),
       "kv_dtype": {n: str(np.dtype(kv.dtype)) for n, kv in variants.items()},
       "kv_bytes_per_token": {n: kv.bytes_per_token for n, kv in variants.items()}}

# KvRows.probe(): the engine's own batch-invariance / split-exactness probe (uses rows 0-2, leaves them empty)
res["probe_same_rows_splits_exact"] = {n: kv.probe() for n, kv in variants.items()}

# prefill each row (one row at a time, like the engine), compare last-position logits
pre = {}
for n, kv in variants.items():
    t = time.perf_counter()
    pre[n] = [kv.run(r, p[None], [0])[0, -1].copy() for r, p in enumerate(prompts)]
    res.setdefault("prefill_4x~1000_s", {})[n] = round(time.perf_counter() - t, 3)
res["prefill_logits_maxabs_fp16_vs_fp32"] = float(max(np.abs(a - b).max() for a, b in zip(pre["fp16"], pre["fp32"])))


def step(kv, L, B):
    lengths = [L + d for d in OFFS[:B]]
    return kv.run(0, next_ids[:B], lengths)[:, 0]


# accuracy + batch invariance at each length (L=1000 first: the L=300 step overwrites position ~300)
acc = {}
for L in (1000, 300):
    lengths = [L + d for d in OFFS]
    out = {}
    for n, kv in variants.items():
        batch = kv.run(0, next_ids, lengths)[:, 0].copy()
        alone = np.stack([kv.run(r, next_ids[r:r + 1], [lengths[r]])[0, 0] for r in range(4)])
        batch2 = kv.run(0, next_ids, lengths)[:, 0].copy()
        out[n] = batch
        acc.setdefault(f"L{L}", {})[f"{n}_batch4_equals_alone_bitwise"] = bool(np.array_equal(batch, alone))
        acc[f"L{L}"][f"{n}_batch4_vs_alone_maxabs"] = float(np.abs(batch - alone).max())
        acc[f"L{L}"][f"{n}_repeat_bitwise"] = bool(np.array_equal(batch, batch2))
    diff = np.abs(out["fp16"] - out["fp32"])
    acc[f"L{L}"]["fp16_vs_fp32_maxabs"] = float(diff.max())
    acc[f"L{L}"]["fp16_vs_fp32_meanabs"] = float(diff.mean())
    acc[f"L{L}"]["fp32_logit_range"] = [float(out["fp32"].min()), float(out["fp32"].max())]
    acc[f"L{L}"]["argmax_equal"] = [bool(a) for a in out["fp16"].argmax(-1) == out["fp32"].argmax(-1)]
    p32 = np.exp(out["fp32"] - out["fp32"].max(-1, keepdims=True))
    p32 /= p32.sum(-1, keepdims=True)
    p16 = np.exp(out["fp16"] - out["fp16"].max(-1, keepdims=True))
    p16 /= p16.sum(-1, keepdims=True)
    acc[f"L{L}"]["prob_maxabs"] = float(np.abs(p32 - p16).max())
res["accuracy"] = acc

# greedy continuation, batch of 4 from the prompts' ends, 32 tokens each; compare the tokens
greedy = {}
for n, kv in variants.items():
    lengths, cur, toks = list(prompt_len), np.array([[int(row.argmax())] for row in pre[n]], np.int64), []
    for _ in range(32):
        toks.append(cur[:, 0].copy())
        logits = kv.run(0, cur, lengths)[:, 0]
        lengths = [x + 1 for x in lengths]
        cur = logits.argmax(-1)[:, None].astype(np.int64)
    greedy[n] = np.stack(toks, 1)
agree = [int(np.argmax(np.r_[greedy["fp16"][r] != greedy["fp32"][r], True])) for r in range(4)]
res["greedy_32_tokens_first_divergence_per_row"] = agree  # 32 = identical
res["greedy_identical_rows"] = int(sum(a == 32 for a in agree))

# timing: interleaved rounds; order of variants alternates per round
times = {f"L{L}_B{B}": {n: [] for n in variants} for L, B in CASES}
for rnd in range(ROUNDS):
    order = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
    for L, B in CASES:
        for n in order:
            kv = variants[n]
            step(kv, L, B)  # warm
            t = time.perf_counter()
            for _ in range(STEPS):
                step(kv, L, B)
            times[f"L{L}_B{B}"][n].append((time.perf_counter() - t) / STEPS * 1e3)
timing = {}
for case, per in times.items():
    m32, m16 = statistics.median(per["fp32"]), statistics.median(per["fp16"])
    timing[case] = {
        "fp32_ms_median": round(m32, 3), "fp32_ms_range": [round(min(per["fp32"]), 3), round(max(per["fp32"]), 3)],
        "fp16_ms_median": round(m16, 3), "fp16_ms_range": [round(min(per["fp16"]), 3), round(max(per["fp16"]), 3)],
        "ratio_fp16_over_fp32": round(m16 / m32, 3),
        "per_round_ratio": [round(a / b, 3) for a, b in zip(per["fp16"], per["fp32"])],
    }
res["decode_step_ms"] = timing
out_json.write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
