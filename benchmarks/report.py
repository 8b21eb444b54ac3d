"""The docs' benchmark tables, generated from the committed results files.

    python -m benchmarks.report            # rewrite the tables between the marker comments in docs/**/*.md
    python -m benchmarks.report --check    # exit 1 when a page's tables differ from what the results give

Every figure is the median over rounds with the min-max range in brackets; each table names the file it came from.
Only the text between ``<!-- benchmarks:<name>:begin ... -->`` and ``<!-- benchmarks:<name>:end -->`` is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, ratio, spread

MARKER_BEGIN = "<!-- benchmarks:{name}:begin"
MARKER_END = "<!-- benchmarks:{name}:end -->"


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_spread(values: list[float | None], digits: int = 1) -> str:
    """``median (min-max)`` of the values that exist; ``n/a`` when none do."""
    s = spread(values)
    if s is None:
        return "n/a"
    if s["n"] == 1 or f"{s['min']:.{digits}f}" == f"{s['max']:.{digits}f}":
        return fmt(s["median"], digits) + (" (1 round)" if s["n"] == 1 else "")
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def fmt_share(value: float | None) -> str:
    return "n/a" if value is None else f"{round(100 * value)}%"


def failure_counts(rounds: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in rounds:
        for kind, n in (r.get("failures") or {}).items():
            total[kind] = total.get(kind, 0) + n
    return total


def fmt_failures(rounds: list[dict[str, Any]]) -> str:
    counts = failure_counts(rounds)
    requests = sum(r.get("requests", 0) for r in rounds)
    if not counts:
        return f"0/{requests}" if requests else "0"
    detail = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))
    head = f"{sum(counts.values())}/{requests}" if requests else str(sum(counts.values()))
    return f"{head} ({detail})"


def machine_line(payload: dict[str, Any], source: str, others: list[float | None] | None = None) -> str:
    """Where the figures come from; ``others``: shares of the machine's CPU other processes used while measuring."""
    m, c = payload["machine"], payload["config"]
    libs = m.get("libraries", {})
    wanted = ("onnxruntime-genai", "onnxruntime", "transformers", "torch", "mlflow", "llama-server", "llama-cpp-python")
    versions = ", ".join(f"{k} {libs[k]}" for k in wanted if k in libs)
    loads = [x[0] for x in m.get("loadavg_per_round") or [] if x]
    load = f"; 1-min load average at round start {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    busy = spread(others or [])
    if busy:
        load += (f"; other processes used {100 * busy['median']:.0f}% ({100 * busy['min']:.0f}-"
                 f"{100 * busy['max']:.0f}%) of the CPU while we measured")
    return (f"Source: `{source}` ({m.get('date', '?')[:10]}, commit {m.get('git_commit') or '?'}). "
            f"{m.get('cpu_model')}, {m.get('physical_cores')} physical cores / {m.get('logical_cpus')} logical, "
            f"{m.get('memory_gib')} GiB; {c['threads']} threads for every engine; {c['rounds']} interleaved rounds"
            f"{load}. {versions}.")


# -- decode ----------------------------------------------------------------------------------------------------------
def decode_tables(payload: dict[str, Any], source: str = "benchmarks/results/decode.json") -> str:
    engines, config = payload["engines"], payload["config"]
    peer = next((n for kind in ("llama_server", "llama_cpp") for n in engines if n.partition("@")[0] == kind), None)
    identical = payload.get("replies", {}).get("identical_share", {})
    stable = payload.get("replies", {}).get("same_text_every_round", {})
    head = ["| engine | threads | decode tok/s | TTFT s | TTFT long prompt s | prefill tok/s (long prompt) | "
            f"e2e tok/s | latency s | reply tokens | x {peer or 'llama.cpp'} decode | "
            f"x {peer or 'llama.cpp'} prefill | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, e in engines.items():
        rounds = e["rounds"]
        peer_rounds = engines[peer]["rounds"] if peer else []
        vs_peer = [ratio(a["decode_tokens_per_s"], b["decode_tokens_per_s"]) for a, b in zip(rounds, peer_rounds)]
        vs_prefill = [ratio(a.get("prefill_tokens_per_s"), b.get("prefill_tokens_per_s"))
                      for a, b in zip(rounds, peer_rounds)]
        whole = "" if e.get("streams", True) else " (whole reply)"
        ttft = fmt_spread([r["ttft_s"] for r in rounds], 3) + whole
        ttft_long = fmt_spread([r.get("ttft_long_s") for r in rounds], 3) + (whole if ttft_long_seen(rounds) else "")
        rows.append(f"| {e.get('label') or name} | {e.get('threads') or config['threads']} | "
                    f"{fmt_spread([r['decode_tokens_per_s'] for r in rounds])} | {ttft} | {ttft_long} | "
                    f"{fmt_spread([r.get('prefill_tokens_per_s') for r in rounds])} | "
                    f"{fmt_spread([r['e2e_tokens_per_s'] for r in rounds])} | "
                    f"{fmt_spread([r['latency_s'] for r in rounds], 2)} | "
                    f"{fmt_spread([r['reply_tokens'] for r in rounds])} | {fmt_spread(vs_peer, 2)} | "
                    f"{fmt_spread(vs_prefill, 2)} | {fmt(e.get('peak_rss_mb'), 0)} |")
    for name, why in (config.get("skipped") or {}).items():
        rows.append(f"| {name} | | skipped: {why} | | | | | | | | | |")
    for label, runs in (payload.get("llama_bench") or {}).items():
        if runs:
            rows.append(f"| llama.cpp `llama-bench` ({label}, no HTTP) | {config['threads']} | "
                        f"{fmt_spread([r.get('decode_tokens_per_s') for r in runs])} | | | "
                        f"{fmt_spread([r.get('prefill_tokens_per_s') for r in runs])} | | | | | | |")
    names = list(engines)
    comp = ["| engine | same text every round | " + " | ".join(f"= {n}" for n in names) + " |",
            "|---|---|" + "---|" * len(names)]
    for a in names:
        comp.append(f"| {a} | {fmt_share(stable.get(a))} | " +
                    " | ".join(fmt_share(identical.get(a, {}).get(b)) for b in names) + " |")
    note = (f"{len(config['prompts'])} prompts (the last one long) x {config['rounds']} rounds, "
            f"{config['max_new_tokens']} new tokens, greedy. Per round, each figure is the median over the prompts "
            "(TTFT: over the short ones); the table shows the median (min-max) of the per-round figures.")
    others = payload["machine"].get("other_cpu_share_per_round")
    return "\n".join([machine_line(payload, source, others), "", note, "", *head, *rows, "",
                      "Greedy reply texts: share of (prompt, round) pairs with identical text.", "", *comp])


def ttft_long_seen(rounds: list[dict[str, Any]]) -> bool:
    return any(r.get("ttft_long_s") is not None for r in rounds)


# -- serve -----------------------------------------------------------------------------------------------------------
def serve_tables(payload: dict[str, Any], source: str = "benchmarks/results/serve.json") -> str:
    servers, config = payload["servers"], payload["config"]
    by_key = {(row["server"], row["workload"], row["clients"]): row for row in payload["rows"]}
    head = ["| server | workload | clients | tok/s | x 1 client | req/s | TTFT p50 s (streamed) | latency p50 s | "
            "latency p95 s | failures | greedy = alone | seeded = alone | structured valid | reply tokens | "
            "others' CPU |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for row in payload["rows"]:
        rounds = row["rounds"]
        solo = by_key.get((row["server"], row["workload"], 1))
        scale = "1.00" if row["clients"] == 1 else fmt_spread(
            [ratio(a["tokens_per_s"], b["tokens_per_s"]) for a, b in zip(rounds, solo["rounds"])] if solo else [], 2)
        label = servers.get(row["server"], {}).get("label", row["server"])
        rows.append(f"| {label} | {row['workload']} | {row['clients']} | "
                    f"{fmt_spread([r['tokens_per_s'] for r in rounds])} | {scale} | "
                    f"{fmt_spread([r['requests_per_s'] for r in rounds], 2)} | "
                    f"{fmt_spread([r.get('ttft_p50_s') for r in rounds], 3)} | "
                    f"{fmt_spread([r['latency_p50_s'] for r in rounds], 2)} | "
                    f"{fmt_spread([r['latency_p95_s'] for r in rounds], 2)} | {fmt_failures(rounds)} | "
                    f"{fmt_share(_mean([r.get('greedy_identical_alone') for r in rounds]))} | "
                    f"{fmt_share(_mean([r.get('seeded_identical_alone') for r in rounds]))} | "
                    f"{fmt_structured(rounds)} | "
                    f"{fmt_spread([r.get('mean_reply_tokens') for r in rounds])} | "
                    f"{fmt_percent(rounds)} |")
    for name, why in (config.get("skipped") or {}).items():
        rows.append(f"| {name} | skipped: {why} | | | | | | | | | | | | | |")
    turns = ["| server | later turn TTFT s | cold, same history TTFT s | later / cold | prompt tokens (later / cold) "
             "| failures |", "|---|---|---|---|---|---|"]
    for item in payload.get("multi_turn", []):
        rounds = item["rounds"]
        label = servers.get(item["server"], {}).get("label", item["server"])
        turns.append(f"| {label} | {fmt_spread([r['warm_ttft_s'] for r in rounds], 3)} | "
                     f"{fmt_spread([r['cold_ttft_s'] for r in rounds], 3)} | "
                     f"{fmt_spread([r['warm_over_cold'] for r in rounds], 2)} | "
                     f"{fmt_spread([r['warm_prompt_tokens'] for r in rounds], 0)} / "
                     f"{fmt_spread([r['cold_prompt_tokens'] for r in rounds], 0)} | {fmt_failures(rounds)} |")
    if payload.get("reuse_decoded_same_replies") is not None:
        turns.append(f"\n`--reuse_decoded true` gave the exact default's reply in "
                     f"{fmt_share(payload['reuse_decoded_same_replies'])} of the turns (same conversations).")
    started = "; ".join(f"{v['label']}: `{' '.join(_short(c) for c in v['command'])}`"
                        + (f" (threads: {v['threads']}" if v.get("threads") else " (")
                        + (f"; peak RSS {v['peak_rss_mb']:.0f} MB)" if v.get("peak_rss_mb") else ")")
                        for v in servers.values())
    multi = (f"multi-turn: {config['conversations']} conversations x 3 turns, {config['turn_tokens']} tokens per "
             "turn, one client" if payload.get("multi_turn") else "no multi-turn conversations")
    levels = ", ".join(str(c) for c in [1, *(config.get("client_levels") or [config["clients"]])])
    note = (f"{config['requests']} requests per workload and round, {config['max_tokens']} reply tokens, "
            f"{levels} concurrent clients; {multi}. Servers: {started}.")
    if not payload.get("multi_turn"):
        turns = []
    others = [r.get("other_cpu_share") for row in payload["rows"] for r in row["rounds"]]
    return "\n".join([machine_line(payload, source, others), "", note, "", *head, *rows, "", *turns])


def grammar_table(payload: dict[str, Any], source: str = "benchmarks/results/grammar-libs.json") -> str:
    """LLGuidance against xgrammar: per constraint, compile ms and per-token mask microseconds (median, min-max)."""
    libs = payload["machine"].get("libraries", {})
    head = [f"Source: `{source}` ({payload['machine'].get('date', '?')[:10]}, commit "
            f"{payload['machine'].get('git_commit') or '?'}); llguidance {libs.get('llguidance', '?')}, xgrammar "
            f"{libs.get('xgrammar', 'not installed')}; one thread; {payload['config']['rounds']} interleaved rounds; "
            "the same token path for both libraries.", "",
            "| constraint | library | compile ms | mask us per token | tokens | refused |", "|---|---|---|---|---|---|"]

    def cell(s: dict | None, digits: int) -> str:
        return "n/a" if not s else f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    def note(r: dict) -> str:
        return (r["error"] or ("walk rejected" if r["rejected_walk"] else ""))[:70].replace("|", "/")

    rows = [f"| {r['constraint']} | {r['library']} | {cell(r['compile_ms'], 2)} | {cell(r['mask_us'], 0)} | "
            f"{r['tokens']}/{r['walk_tokens']} | {note(r)} |" for r in payload["rows"]]
    return "\n".join(head + rows)


def fmt_structured(rounds: list[dict[str, Any]]) -> str:
    """Share of ended structured replies that kept to their constraint, and how many were cut at max_tokens."""
    cut = sum(r.get("structured_cut_at_max_tokens") or 0 for r in rounds)
    return fmt_share(_mean([r.get("structured_valid") for r in rounds])) + (f" ({cut} cut)" if cut else "")


def fmt_percent(rounds: list[dict[str, Any]]) -> str:
    """Share of the CPU other processes used during the row's measurements, as median (min-max) percent."""
    s = spread([r.get("other_cpu_share") for r in rounds])
    if s is None:
        return "n/a"
    return f"{100 * s['median']:.0f}% ({100 * s['min']:.0f}-{100 * s['max']:.0f}%)"


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _short(arg: str) -> str:
    """Command arguments as README shows them: file paths by their last part."""
    return Path(arg).name if "/" in arg and not arg.startswith("models:/") else arg


# -- pages -----------------------------------------------------------------------------------------------------------
def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block between the markers of ``name`` replaced by ``body``; raises when markers are missing."""
    begin, end = MARKER_BEGIN.format(name=name), MARKER_END.format(name=name)
    pattern = re.compile(re.escape(begin) + r"[^\n]*-->\n(.*?)" + re.escape(end), re.S)
    match = pattern.search(text)
    if match is None:
        raise ValueError(f"the page has no '{begin} ... -->' / '{end}' markers")
    return text[:match.start(1)] + body.rstrip("\n") + "\n" + text[match.end(1):]


def build(results: Path) -> dict[str, str]:
    blocks = {}
    from benchmarks.bench_pipeline import pipeline_table

    for name, builder in (("decode", decode_tables), ("serve", serve_tables), ("grammar-libs", grammar_table),
                          ("decode-phi3-mini", decode_tables), ("decode-phi3-mini-b128", decode_tables),
                          ("serve-phi3-mini", serve_tables),
                          ("pipeline-phi3-mini", lambda payload, _source: pipeline_table(payload))):
        path = results / f"{name}.json"
        if path.is_file():
            try:
                source = str(path.resolve().relative_to(ROOT))
            except ValueError:
                source = str(path)
            blocks[name] = builder(json.loads(path.read_text()), source)
    return blocks


def pages_of(paths: list[str]) -> list[Path]:
    """The Markdown files under ``paths`` (files, or folders searched recursively), sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        found.update(path.rglob("*.md") if path.is_dir() else [path])
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="Folder with decode/serve.json.")
    p.add_argument("--pages", nargs="+", default=[str(ROOT / "docs")],
                   help="Markdown files, or folders of them, that hold the tables' markers (default: docs/).")
    p.add_argument("--check", action="store_true", help="Only compare; exit 1 when a page is out of date.")
    args = p.parse_args(argv)
    texts = {page: page.read_text() for page in pages_of(args.pages)}
    new = dict(texts)
    for name, body in build(Path(args.results)).items():
        holders = [page for page, text in new.items() if MARKER_BEGIN.format(name=name) in text]
        if not holders:
            marker = MARKER_BEGIN.format(name=name)
            raise ValueError(f"no page under {', '.join(args.pages)} has the '{marker}' markers")
        for page in holders:
            new[page] = replace_block(new[page], name, body)
    stale = [page for page in texts if new[page] != texts[page]]
    if args.check:
        for page in stale:
            print(f"{page}: benchmark tables are out of date; run python -m benchmarks.report", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        page.write_text(new[page])
    return 0


if __name__ == "__main__":
    sys.exit(main())
