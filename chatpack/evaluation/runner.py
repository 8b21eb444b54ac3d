"""Run one logged chat model over the eval rows in a child process: replies, timings and the child's peak memory.

Each flavour runs alone in a fresh process (spawned, one after the other), so its peak RSS is its own and the two do
not compete for the CPU while being timed; the machine's load average is recorded with the timings (other processes
on the machine do compete, and the figures are only as good as that number is low). Every row is answered within its
own budget (:meth:`chatpack.evaluation.data.EvalRow.budget`).

Speed is measured on an evenly spread sample of :data:`TIMED_ROWS` rows, answered one at a time: each gets a 1-token
request first (time to first token), then its reply is timed. The other rows are only scored, so they are answered
the fast way the model allows (:func:`batching`): the ONNX pyfunc from :data:`BATCH` threads at once (its scheduler
batches greedy requests that meet, with the same replies as alone), the transformers flavour with its pipeline's
``batch_size`` set at load time (declared in its ``model_config``; left-padded batches, greedy), other models one at a
time. On the bundled model this makes a 340-prompt evaluation ~3-10x faster than answering every row alone.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from queue import Empty
from typing import Any

from chatpack.evaluation.data import EvalRow
from chatpack.evaluation.memory import peak_rss_mb
from chatpack.flavours.model_config import BATCH_SIZE_KEY
from chatpack.flavours.onnx_chat.pyfunc_model import CONCURRENCY_KEY

TIMED_ROWS = 40  # rows answered alone and timed; the rest are answered in batches
BATCH = 8  # rows answered at once outside the timed sample


@dataclass
class RowResult:
    id: str
    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float | None  # None: answered in a batch, not timed
    ttft_s: float | None  # None: not in the timed sample


@dataclass
class FlavourRun:
    model_uri: str
    rows: list[RowResult]
    load_s: float
    peak_rss_mb: float
    loadavg_1m: float = 0.0  # the machine's 1-minute load average, mean of the run's start and end

    def speed(self) -> dict[str, float]:
        """Speed metrics from the timed rows: TTFT (latency of a 1-token reply), decode tokens/s, latency p50/p95,
        throughput (their tokens over their time); the mean reply length over every row."""
        timed = [r for r in self.rows if r.latency_s is not None and r.ttft_s is not None]
        latencies = sorted(r.latency_s for r in timed)
        decode = [(r.completion_tokens - 1) / (r.latency_s - r.ttft_s) for r in timed
                  if r.completion_tokens > 1 and r.latency_s > r.ttft_s]
        tokens = sum(r.completion_tokens for r in timed)
        return {
            "ttft_p50_s": statistics.median(r.ttft_s for r in timed) if timed else 0.0,
            "decode_tokens_per_s": statistics.median(decode) if decode else 0.0,
            "latency_p50_s": _percentile(latencies, 50),
            "latency_p95_s": _percentile(latencies, 95),
            "tokens_per_s": tokens / sum(latencies) if latencies else 0.0,
            "completion_tokens_mean": sum(r.completion_tokens for r in self.rows) / len(self.rows),
            "timed_rows": len(timed),
            "load_s": self.load_s,
            "peak_rss_mb": self.peak_rss_mb,
            "loadavg_1m": self.loadavg_1m,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def batching(model_uri: str) -> tuple[str, dict[str, Any] | None]:
    """How to answer untimed rows fast, from the model's MLmodel: ``("threads", None)`` for a model that batches
    concurrent calls, ``("pipeline", model_config)`` for one whose pipeline batch size can be set at load, else
    ``("alone", None)``."""
    import mlflow

    info = mlflow.models.get_model_info(model_uri)
    if (info.metadata or {}).get(CONCURRENCY_KEY) == "batched":
        return "threads", None
    if BATCH_SIZE_KEY in (info.flavors.get("python_function", {}).get("config") or {}):
        return "pipeline", {BATCH_SIZE_KEY: BATCH}
    return "alone", None


def timed_sample(count: int, size: int | None = None) -> list[int]:
    """``size`` (default :data:`TIMED_ROWS`) row indices spread evenly over ``count`` rows (all when fewer)."""
    size = TIMED_ROWS if size is None else size
    if count <= size:
        return list(range(count))
    return sorted({round(i * (count - 1) / (size - 1)) for i in range(size)})


def _result(row: dict[str, Any], reply: dict[str, Any], latency: float | None, ttft: float | None) -> dict:
    choice = reply["choices"][0]
    return asdict(RowResult(row["id"], choice["message"]["content"] or "", choice["finish_reason"],
                            reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"], latency, ttft))


def _request(row: dict[str, Any], max_tokens: int | None = None) -> dict[str, Any]:
    return {"messages": row["messages"], "max_tokens": max_tokens or row["max_tokens"]}


def _answer_batched(model: Any, how: str, rows: list[dict[str, Any]], progress: Callable[[int], Any]) -> list[dict]:
    """Replies to ``rows`` (in order), ``BATCH`` at a time, the way :func:`batching` chose."""
    import pandas as pd

    if how == "threads":
        def one(row: dict[str, Any]) -> dict[str, Any]:
            reply = model.predict(_request(row))[0]
            progress(1)
            return reply

        with ThreadPoolExecutor(BATCH, thread_name_prefix="eval") as pool:
            return list(pool.map(one, rows))
    replies: list[dict[str, Any] | None] = [None] * len(rows)
    for _budget, group in groupby(sorted(range(len(rows)), key=lambda i: rows[i]["max_tokens"]),
                                 key=lambda i: rows[i]["max_tokens"]):  # one reply budget per pipeline call
        group = sorted(group, key=lambda i: len(json.dumps(rows[i]["messages"])))  # like lengths: little padding
        step = BATCH if how == "pipeline" else 1
        for chunk in (group[k:k + step] for k in range(0, len(group), step)):
            answers = model.predict(pd.DataFrame([_request(rows[i]) for i in chunk]))
            for i, reply in zip(chunk, answers):
                replies[i] = _recounted(model, reply) if len(chunk) > 1 else reply
            progress(len(chunk))
    return replies  # type: ignore[return-value]


def _recounted(model: Any, reply: dict[str, Any]) -> dict[str, Any]:
    """A reply from a batched pipeline call with its completion tokens counted again from its text: MLflow's
    transformers flavour counts a batch's padding as completion tokens (measured: 43 for a 6-token reply)."""
    tokenizer = model._model_impl.pipeline.tokenizer  # the flavour's pipeline: no public accessor on the pyfunc
    text = reply["choices"][0]["message"]["content"] or ""
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return {**reply, "usage": {**reply["usage"], "completion_tokens": tokens,
                               "total_tokens": reply["usage"]["prompt_tokens"] + tokens}}


def _generate(model_uri: str, rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Child-process body: load the model, answer every row greedily (the timed sample alone, the rest batched),
    report timings and peak RSS."""
    import mlflow
    from tqdm.auto import tqdm

    how, config = batching(model_uri)
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri, model_config=config)
    load_s = time.perf_counter() - start
    model.predict(_request(rows[0], 2))  # warm-up, not timed
    results: list[dict[str, Any] | None] = [None] * len(rows)
    timed = timed_sample(len(rows))
    with tqdm(total=len(rows), desc=f"evaluate {label}", unit="prompt") as bar:
        for i in timed:
            t0 = time.perf_counter()
            model.predict(_request(rows[i], 1))
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            reply = model.predict(_request(rows[i]))[0]
            results[i] = _result(rows[i], reply, time.perf_counter() - t0, ttft)
            bar.update(1)
        rest = [i for i in range(len(rows)) if results[i] is None]
        for i, reply in zip(rest, _answer_batched(model, how, [rows[i] for i in rest], bar.update)):
            results[i] = _result(rows[i], reply, None, None)
    rss_mb = peak_rss_mb()
    return {"rows": results, "load_s": load_s, "peak_rss_mb": rss_mb,
            "loadavg_1m": (load_at_start + os.getloadavg()[0]) / 2, "batching": how}


def _child(queue, *args) -> None:
    try:
        queue.put(("ok", _generate(*args)))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


@contextlib.contextmanager
def _this_package_first() -> Iterator[None]:
    """The spawned child imports ``chatpack`` from where this module came from. A process that has loaded a logged
    model in-process (tests do) has that model's ``code/`` folder, with its own partial ``chatpack``, early on
    ``sys.path``, which the child inherits."""
    saved = list(sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    try:
        yield
    finally:
        sys.path[:] = saved


def run_flavour(model_uri: str, rows: list[EvalRow], max_new_tokens: int, label: str) -> FlavourRun:
    """Answer ``rows`` with the model at ``model_uri`` in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    payload = [{"id": r.id, "messages": r.messages, "max_tokens": r.budget(max_new_tokens)} for r in rows]
    proc = ctx.Process(target=_child, args=(queue, model_uri, payload, label))
    with _this_package_first():
        proc.start()
    while True:  # a child that dies without a word (a crash at start-up) must not leave the parent waiting forever
        try:
            status, result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                status, result = "error", f"the evaluation process exited with code {proc.exitcode} and no result"
                break
    proc.join()
    if status != "ok":
        raise RuntimeError(f"evaluating {label} ({model_uri}) failed: {result}")
    return FlavourRun(model_uri, [RowResult(**r) for r in result["rows"]], result["load_s"], result["peak_rss_mb"],
                      result["loadavg_1m"])
