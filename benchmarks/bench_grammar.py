"""LLGuidance against xgrammar on the same constraints and the same tokens: compile time (cold), per-token mask time,
and whether each library takes each shape chatpack serves (JSON schemas, tools grammars, regex).

    python -m benchmarks.bench_grammar --model_dir <an ONNX model folder with tokenizer.json> [--rounds 3]

xgrammar is not a dependency of the project: install it next to it for this comparison
(``pip install --no-deps --target /tmp/xgr xgrammar apache-tvm-ffi`` and ``PYTHONPATH=/tmp/xgr``); without it only
LLGuidance is measured. Each constraint's token path is a seeded walk through LLGuidance's masks (the same tokens
for both libraries, up to 64); a library that refuses a shape is counted, not timed. Writes
``benchmarks/results/grammar-libs.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.structured_cases import CASES
from chatpack.engine.guidance import build, styled
from chatpack.protocol.reply_format import read_reply_format

TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": schema}}
         for i, (_, schema) in enumerate(CASES[:8])]


def constraints() -> list[tuple[str, str, str, dict | None]]:
    """(name, kind, LLGuidance text, the JSON schema or None)."""
    out = [(f"schema{i}", "json_schema", styled(schema), schema) for i, (_, schema) in enumerate(CASES)]
    for choice in ("required", "auto"):
        g = build(read_reply_format(None, TOOLS, choice, None))
        out.append((f"tools8_{choice}", g.kind, g.text, None))
    out.append(("regex_date", "regex", r"\d{4}-\d{2}-\d{2}", None))
    return out


def walk(llg: Any, tokenizer: Any, kind: str, text: str, vocab: int, seed: int, limit: int = 64) -> list[int]:
    """A seeded path of allowed tokens (biased to short tokens ending the grammar soon)."""
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    grammar = {"json_schema": llg.LLMatcher.grammar_from_json_schema, "regex": llg.LLMatcher.grammar_from_regex,
               "lark_grammar": llg.LLMatcher.grammar_from_lark}[kind](text)
    m, rng, path = llg.LLMatcher(tokenizer, grammar, log_level=0), np.random.default_rng(seed), []
    mask = allocate_token_bitmask(1, vocab)
    while len(path) < limit and not m.is_stopped():
        fill_next_token_bitmask(m, mask, 0)
        allowed = np.flatnonzero(np.unpackbits(mask[0].view(np.uint8), bitorder="little")[:vocab])
        allowed = [t for t in allowed if t not in tokenizer.eos_tokens] or list(allowed)
        token = int(rng.choice(allowed))
        if not m.consume_token(token):
            break
        path.append(token)
    return path


def time_llguidance(llg: Any, tokenizer: Any, kind: str, text: str, path: list[int], vocab: int) -> dict:
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    start = time.perf_counter()
    grammar = {"json_schema": llg.LLMatcher.grammar_from_json_schema, "regex": llg.LLMatcher.grammar_from_regex,
               "lark_grammar": llg.LLMatcher.grammar_from_lark}[kind](text)
    m = llg.LLMatcher(tokenizer, grammar, log_level=0)
    compile_s = time.perf_counter() - start
    mask, steps = allocate_token_bitmask(1, vocab), []
    for token in path:
        t = time.perf_counter()
        fill_next_token_bitmask(m, mask, 0)
        m.consume_token(token)
        steps.append(time.perf_counter() - t)
    return {"compile_ms": compile_s * 1e3, "mask_us": statistics.median(steps) * 1e6 if steps else None,
            "tokens": len(steps)}


def time_xgrammar(xgr: Any, info: Any, kind: str, text: str, schema: dict | None, path: list[int]) -> dict:
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    start = time.perf_counter()
    try:
        if kind == "json_schema":
            compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                    separators=(", ", ": "), strict_mode=True)
        elif kind == "regex":
            compiled = compiler.compile_regex(text)
        else:
            compiled = compiler.compile_lark(text)
    except Exception as exc:  # noqa: BLE001 - the library's refusal is the finding
        return {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    compile_s = time.perf_counter() - start
    m = xgr.GrammarMatcher(compiled)
    mask, steps, taken = xgr.allocate_token_bitmask(1, info.vocab_size), [], 0
    for token in path:
        t = time.perf_counter()
        m.fill_next_token_bitmask(mask, 0)
        ok = m.accept_token(token)
        steps.append(time.perf_counter() - t)
        if not ok:
            break
        taken += 1
    return {"compile_ms": compile_s * 1e3, "mask_us": statistics.median(steps) * 1e6 if steps else None,
            "tokens": taken, "rejected_walk": taken < len(path)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_dir", default="demo", type=common.onnx_dir_arg,
                   help="An onnxruntime-genai folder, a logged ONNX model (models:/...) or demo (the default: the ONNX "
                        "model `make demo` registered).")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (>= 3).")
    p.add_argument("--out", default=str(common.RESULTS / "grammar-libs.json"))
    args = p.parse_args(argv)
    import llguidance as llg

    folder = Path(args.model_dir)
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    vocab = int(config["vocab_size"])
    eos = config.get("eos_token_id", [])
    tokenizer = llg.LLTokenizer((folder / "tokenizer.json").read_text(), n_vocab=vocab,
                                eos_token=eos if isinstance(eos, list) else [eos])
    try:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab,
                                                  stop_token_ids=eos if isinstance(eos, list) else [eos])
        versions = {"xgrammar": importlib.metadata.version("xgrammar")}
    except ImportError:
        xgr = info = None
        versions = {}
    versions["llguidance"] = importlib.metadata.version("llguidance")
    cases = constraints()
    paths = {name: walk(llg, tokenizer, kind, text, vocab, seed=i) for i, (name, kind, text, _) in enumerate(cases)}
    rounds: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for name, kind, text, schema in cases:
            libs = [("llguidance", lambda: time_llguidance(llg, tokenizer, kind, text, paths[name], vocab))]
            if xgr is not None:
                libs.append(("xgrammar", lambda: time_xgrammar(xgr, info, kind, text, schema, paths[name])))
            for lib, run in libs if r % 2 == 0 else libs[::-1]:
                rounds.setdefault((name, lib), []).append(run())
    rows = []
    for (name, lib), results in rounds.items():
        errors = [x["error"] for x in results if "error" in x]
        ok = [x for x in results if "error" not in x]
        rows.append({"constraint": name, "library": lib, "error": errors[0] if errors else None,
                     "compile_ms": common.spread(x["compile_ms"] for x in ok),
                     "mask_us": common.spread(x["mask_us"] for x in ok),
                     "tokens": ok[0]["tokens"] if ok else 0, "walk_tokens": len(paths[name]),
                     "rejected_walk": any(x.get("rejected_walk") for x in ok)})
    payload = {"benchmark": "grammar-libs", "machine": common.machine_info(1, versions),
               "config": {"model_dir": folder.name, "rounds": args.rounds, "vocab_size": vocab}, "rows": rows}
    out = Path(args.out)
    common.write_json(out, payload)
    from benchmarks.report import grammar_table

    print(grammar_table(payload, str(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
