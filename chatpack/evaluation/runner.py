"""Run one logged chat model over the eval rows in a child process: replies, timings and the child's peak memory.

Each flavour runs alone in a fresh process (spawned, one after the other), so its peak RSS is its own and the two do
not compete for the CPU while being timed. Every row is answered within its own budget
(:meth:`chatpack.evaluation.data.EvalRow.budget`); time to first token is measured on an evenly spread sample of
:data:`TTFT_ROWS` rows (one extra 1-token request each).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from chatpack.evaluation.data import EvalRow
from chatpack.evaluation.memory import peak_rss_mb

TTFT_ROWS = 40


@dataclass
class RowResult:
    id: str
    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None  # None: not in the TTFT sample


@dataclass
class FlavourRun:
    model_uri: str
    rows: list[RowResult]
    load_s: float
    peak_rss_mb: float

    def speed(self) -> dict[str, float]:
        """Speed metrics: TTFT (latency of a 1-token reply), decode tokens/s, latency p50/p95, throughput."""
        latencies = sorted(r.latency_s for r in self.rows)
        timed = [r for r in self.rows if r.ttft_s is not None]
        decode = [(r.completion_tokens - 1) / (r.latency_s - r.ttft_s) for r in timed
                  if r.completion_tokens > 1 and r.latency_s > r.ttft_s]
        tokens = sum(r.completion_tokens for r in self.rows)
        return {
            "ttft_p50_s": statistics.median(r.ttft_s for r in timed) if timed else 0.0,
            "decode_tokens_per_s": statistics.median(decode) if decode else 0.0,
            "latency_p50_s": _percentile(latencies, 50),
            "latency_p95_s": _percentile(latencies, 95),
            "tokens_per_s": tokens / sum(latencies) if latencies else 0.0,
            "completion_tokens_mean": tokens / len(self.rows),
            "load_s": self.load_s,
            "peak_rss_mb": self.peak_rss_mb,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _generate(model_uri: str, rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Child-process body: load the model, answer every row greedily, report timings and peak RSS."""
    import mlflow
    from tqdm.auto import tqdm

    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_s = time.perf_counter() - start
    model.predict({"messages": rows[0]["messages"], "max_tokens": 2})  # warm-up, not timed
    results = []
    every = max(1, len(rows) // TTFT_ROWS)
    for i, row in enumerate(tqdm(rows, desc=f"evaluate {label}", unit="prompt")):
        ttft = None
        if i % every == 0:
            t0 = time.perf_counter()
            model.predict({"messages": row["messages"], "max_tokens": 1})
            ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        reply = model.predict({"messages": row["messages"], "max_tokens": row["max_tokens"]})[0]
        latency = time.perf_counter() - t0
        choice = reply["choices"][0]
        results.append(asdict(RowResult(row["id"], choice["message"]["content"] or "", choice["finish_reason"],
                                        reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"],
                                        latency, ttft)))
    rss_mb = peak_rss_mb()
    return {"rows": results, "load_s": load_s, "peak_rss_mb": rss_mb}


def _child(queue, *args) -> None:
    try:
        queue.put(("ok", _generate(*args)))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_flavour(model_uri: str, rows: list[EvalRow], max_new_tokens: int, label: str) -> FlavourRun:
    """Answer ``rows`` with the model at ``model_uri`` in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    payload = [{"id": r.id, "messages": r.messages, "max_tokens": r.budget(max_new_tokens)} for r in rows]
    proc = ctx.Process(target=_child, args=(queue, model_uri, payload, label))
    proc.start()
    status, result = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"evaluating {label} ({model_uri}) failed: {result}")
    return FlavourRun(model_uri, [RowResult(**r) for r in result["rows"]], result["load_s"], result["peak_rss_mb"])
