"""Where the fp16-KV logit difference comes from: fp16 storage (rounding) vs the fp16 GQA kernel's arithmetic.

Decode step at ~1000 (batch of 4, the same rows/prompts as bench_steps.py), logits compared with plain fp32:
  a) fp32 graph, KV cache rounded to fp16 after the prefill (storage rounding only)
  b) roundtrip graph (fp32 GQA, qkv/cos/sin/attention output rounded via fp16) + rounded cache: every fp16 rounding the
     fp16 variant has, with fp32 attention arithmetic
  c) the fp16-KV graph (fp16 GQA kernel)
usage: python -m benchmarks.fp16_kv.accuracy FP32_DIR ROUNDTRIP_DIR FP16_DIR OUT_JSON
"""

import json
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from chatpack.engine.kv_rows import KvRows

ROOT = Path(__file__).resolve().parents[2]

d32, drt, d16, out_json = map(Path, sys.argv[1:5])
OFFS = (0, -3, 5, -7)
tok = Tokenizer.from_file(str(d32 / "tokenizer.json"))
text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])
ids_all = np.array(tok.encode(text).ids, np.int64)
lengths = [1000 + d for d in OFFS]
prompts = [ids_all[1000 * r: 1000 * r + n] for r, n in enumerate(lengths)]
next_ids = np.array([[int(p[-1])] for p in prompts], np.int64)


def fill(d):
    kv = KvRows(d, rows=4, row_tokens=1100, threads=2)
    for r, p in enumerate(prompts):
        kv.run(r, p[None], [0])
    return kv


def round_cache(kv):
    for c in kv._cache:
        c[...] = c.astype(np.float16).astype(np.float32)


def greedy(kv, n=32):
    lens, cur, toks = list(lengths), next_ids.copy(), []
    for _ in range(n):
        lg = kv.run(0, cur, lens)[:, 0]
        lens = [x + 1 for x in lens]
        cur = lg.argmax(-1)[:, None].astype(np.int64)
        toks.append(cur[:, 0].copy())
    return np.stack(toks, 1)


res = {}
kv32 = fill(d32)
saved = [c.copy() for c in kv32._cache]
ref = kv32.run(0, next_ids, lengths)[:, 0].copy()
g_ref = greedy(kv32)
for c, s in zip(kv32._cache, saved):
    c[...] = s
round_cache(kv32)
a = kv32.run(0, next_ids, lengths)[:, 0].copy()
g_a = greedy(kv32)
del kv32, saved
kvrt = fill(drt)
round_cache(kvrt)
b = kvrt.run(0, next_ids, lengths)[:, 0].copy()
g_b = greedy(kvrt)
del kvrt
kv16 = fill(d16)
c = kv16.run(0, next_ids, lengths)[:, 0].copy()
g_c = greedy(kv16)


def first_div(g):
    return [int(np.argmax(np.r_[g[r] != g_ref[r], True])) for r in range(4)]


for name, x, g in (("a_fp32_cache_rounded", a, g_a), ("b_roundtrip_fp32_math", b, g_b), ("c_fp16_kernel", c, g_c)):
    res[name] = {"maxabs_vs_fp32": float(np.abs(x - ref).max()), "meanabs_vs_fp32": float(np.abs(x - ref).mean()),
                 "argmax_equal": [bool(v) for v in x.argmax(-1) == ref.argmax(-1)],
                 "greedy32_first_divergence_per_row": first_div(g)}
res["c_vs_b_maxabs"] = float(np.abs(c - b).max())
out_json.write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
