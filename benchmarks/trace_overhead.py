"""What tracing costs a request: the same model behind two ``serve`` processes, tracing on and off, taking turns.

    python -m benchmarks.trace_overhead --model_uri <model URI> [--requests 120] [--block 10] [--max_tokens 32]

Requests go one at a time, in blocks that alternate between the two servers (so both see the same machine load, and
the traced server's background export runs while its own next requests are answered, where it would cost them).
Half the requests stream. Reports:

- end-to-end latency per server, and the overhead of tracing as the median over block pairs of traced / untraced
  mean latency - 1 (adjacent blocks share the machine's load, which on a shared machine moves more than tracing);
- CPU seconds per trace of the traced server's exporter process (``/proc``; off the request path, ``SCHED_IDLE``);
- the share of the machine other processes used meanwhile (noise).

Writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.client import chat
from benchmarks.common import CpuMeter, group_cpu_seconds, machine_info, model_uri_arg, stop_process
from benchmarks.soak import PROMPTS, start_serve

RESULTS = Path(__file__).resolve().parent / "results"


def start_server(model_uri: str, tracing: bool, experiment: str) -> tuple[subprocess.Popen, str]:
    proc, base = start_serve(model_uri, "--tracing", str(tracing).lower(), "--experiment", experiment)
    return proc, base + "/v1/chat/completions"


def body(index: int, max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{PROMPTS[index % len(PROMPTS)]} ({index})"}],
            "max_tokens": max_tokens, "stream": index % 2 == 1}


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` alone, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 2),
            "mean_ms": round(statistics.fmean(values) * 1000, 2)}


def overhead(on: list[float], off: list[float]) -> dict[str, float]:
    return {"median_pct": round((statistics.median(on) / statistics.median(off) - 1) * 100, 2),
            "mean_pct": round((statistics.fmean(on) / statistics.fmean(off) - 1) * 100, 2)}


def measure(args: argparse.Namespace, first: str = "on") -> dict[str, Any]:
    """One round: the two servers started ``first`` then the other (the order matters, see :func:`rounds`)."""
    servers = {}
    try:
        for mode in (first, "off" if first == "on" else "on"):
            servers[mode] = start_server(args.model_uri, mode == "on" and not args.calibrate, args.experiment)
        for i in range(args.warmup):  # both servers answer every kind once before timing
            for _, url in servers.values():
                chat(url, body(i, args.max_tokens))
        times: dict[str, dict[bool, list[float]]] = {"on": {False: [], True: []}, "off": {False: [], True: []}}
        blocks: dict[str, list[float]] = {"on": [], "off": []}
        failures = 0
        time.sleep(3)  # the warm-up's traces written
        pids = {mode: proc.pid for mode, (proc, _) in servers.items()}
        cpu0 = {mode: (process_cpu_seconds(pid), group_cpu_seconds(pid)) for mode, pid in pids.items()}
        meter = CpuMeter(list(pids.values())).start()
        for start in range(0, args.requests, args.block):
            order = ("on", "off") if (start // args.block) % 2 == 0 else ("off", "on")
            for mode in order:
                block = []
                for i in range(start, min(start + args.block, args.requests)):
                    request = body(i, args.max_tokens)
                    reply = chat(servers[mode][1], request)
                    failures += not reply.ok
                    times[mode][request["stream"]].append(reply.total_s)
                    block.append(reply.total_s)
                blocks[mode].append(statistics.fmean(block))
        others = meter.stop()
        time.sleep(5)  # let the exporter write the last traces before reading its CPU
        exporter_cpu = group_cpu_seconds(pids["on"]) - cpu0["on"][1] - (process_cpu_seconds(pids["on"]) - cpu0["on"][0])
    finally:
        for proc, _ in servers.values():
            stop_process(proc, timeout=180)  # SIGTERM: the server lets its exporter finish first
            stop_process(proc, group=True)
    every = {mode: kinds[False] + kinds[True] for mode, kinds in times.items()}
    paired = [on / off - 1 for on, off in zip(blocks["on"], blocks["off"])]
    return {"started_first": first, "model_uri": args.model_uri, "requests_per_server": args.requests,
            "block": args.block,
            "max_tokens": args.max_tokens, "failures": failures,
            "latency": {mode: stats(values) for mode, values in every.items()},
            "overhead_paired_blocks_median_pct": round(statistics.median(paired) * 100, 2),
            "overhead": overhead(every["on"], every["off"]),
            "overhead_whole": overhead(times["on"][False], times["off"][False]),
            "overhead_streamed": overhead(times["on"][True], times["off"][True]),
            "exporter_cpu_ms_per_trace": round(exporter_cpu / args.requests * 1000, 2),
            "other_processes_cpu_share": others, "machine": machine_info(threads=os.cpu_count() or 1)}


def rounds(args: argparse.Namespace) -> dict[str, Any]:
    """Two rounds, the traced server started first in one and second in the other. Measured here: of two servers
    started one after the other, both untraced, the first answered ~13% slower (``--calibrate``); a bias that size
    hides any tracing cost, and alternating the start order cancels it. The overhead is the mean of the two rounds'
    paired-block medians."""
    both = [measure(args, first) for first in ("on", "off")]
    paired = [r["overhead_paired_blocks_median_pct"] for r in both]
    return {"overhead_pct": round(statistics.fmean(paired), 2), "rounds": both, "calibrate": args.calibrate,
            "failures": sum(r["failures"] for r in both),
            "exporter_cpu_ms_per_trace": round(statistics.fmean(r["exporter_cpu_ms_per_trace"] for r in both), 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_uri", default="demo", type=model_uri_arg,
                   help="The ONNX model: a models:/ or runs:/ URI, or demo (the default: the ONNX model `make demo` "
                        "registered).")
    p.add_argument("--requests", type=int, default=120, help="Timed requests per server (half streamed).")
    p.add_argument("--block", type=int, default=10, help="Requests per turn before switching servers.")
    p.add_argument("--max_tokens", type=int, default=32, help="Tokens per reply.")
    p.add_argument("--warmup", type=int, default=4, help="Untimed requests per server first.")
    p.add_argument("--experiment", default="chatpack-trace-overhead", help="Experiment the traced server writes to.")
    p.add_argument("--calibrate", action="store_true",
                   help="Both servers untraced: what the comparison reads when tracing costs nothing.")
    p.add_argument("--out", type=Path, default=RESULTS, help="Folder for the JSON result.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = rounds(args)
    print("| round (started first) | tracing | requests | median ms | mean ms | overhead, median over block pairs |")
    print("|---|---|---|---|---|---|")
    for r in result["rounds"]:
        for mode in ("off", "on"):
            lat = r["latency"][mode]
            print(f"| {r['started_first']} | {mode} | {lat['n']} | {lat['median_ms']} | {lat['mean_ms']} | "
                  f"{r['overhead_paired_blocks_median_pct']:+.2f}% |")
    print(f"\nlatency overhead of tracing{' (calibration: both untraced)' if args.calibrate else ''}: "
          f"{result['overhead_pct']:+.2f}% (mean of the two rounds); failures: {result['failures']}; exporter "
          f"process: {result['exporter_cpu_ms_per_trace']} ms CPU per trace")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"trace-overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
