"""llama.cpp's row for the sweep table: the bundled model's own Q4_1 GGUF answered by llama.cpp's ``llama-server`` on
the same eval set, scored and paired with the transformers replies of a finished evaluate run.

The bundled reference *is* that GGUF dequantised, so llama.cpp runs the reference weights: its KL divergence from the
reference is ~0 by construction (not measured here: ``llama-perplexity`` is not built), its speed is the bar. Needs a
``llama-server`` binary (``benchmarks/build_llama_server.sh`` builds one; ``llama-cpp-python`` is not needed)::

    python -m benchmarks.llama_row --evaluate_run_id <run> --llama_server /path/to/llama-server
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from tqdm.auto import tqdm

from chatpack.evaluation.data import DEFAULT_EVAL_DATA, EvalRow, load_eval_rows
from chatpack.evaluation.intervals import mean_interval, paired_gap_interval
from chatpack.evaluation.quality import score_row
from chatpack.sources.bundled import bundled_gguf

logger = logging.getLogger(__name__)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def answer_all(server: str, gguf: Path, rows: list[EvalRow], max_new_tokens: int, threads: int) -> list[dict]:
    """Start llama-server on the GGUF, answer every row greedily within its budget, stop the server."""
    port = _port()
    proc = subprocess.Popen([server, "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", "1",
                             "-c", "4096", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        _post(base + "/v1/chat/completions", {"messages": rows[0].messages, "max_tokens": 2, "temperature": 0})
        out = []
        for row in tqdm(rows, desc="llama-server", unit="prompt"):
            start = time.perf_counter()
            reply = _post(base + "/v1/chat/completions", {"messages": row.messages, "temperature": 0,
                                                          "max_tokens": row.budget(max_new_tokens)})
            latency = time.perf_counter() - start
            choice, usage = reply["choices"][0], reply["usage"]
            tokens = usage["completion_tokens"] - (1 if choice["finish_reason"] == "stop" else 0)  # counts EOS
            out.append({"reply": choice["message"]["content"] or "", "tokens": tokens, "latency_s": latency,
                        "decode_tokens_per_s": reply.get("timings", {}).get("predicted_per_second", 0.0)})
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def llama_row(evaluate_run_id: str, server: str, threads: int = 2) -> dict[str, Any]:
    """The row: quality with its interval, the paired gap to the transformers replies, speed and size."""
    run = mlflow.get_run(evaluate_run_id)
    eval_data = run.data.params.get("eval_data", "").strip("'\"")  # MLflow logs an empty parameter as ''
    rows = load_eval_rows(eval_data or DEFAULT_EVAL_DATA)
    max_new_tokens = int(run.data.params.get("max_new_tokens", 64))
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=evaluate_run_id,
                                                                 artifact_path="eval_rows.json")).read_text())
    reference = [float(x) for x in (dict(zip(table["columns"], r))["transformers_row_score"] for r in table["data"])]
    gguf, _ = bundled_gguf("smollm2-135m-instruct")
    answers = answer_all(server, gguf, rows, max_new_tokens, threads)
    scores = [float(score_row(row, a["reply"])["row_score"]) for row, a in zip(rows, answers)]
    quality, gap = mean_interval(scores), paired_gap_interval(reference, scores)
    decode = sorted(a["decode_tokens_per_s"] for a in answers if a["tokens"] > 1)
    return {"model": "llama.cpp (llama-server, Q4_1 GGUF)", "size_mb": gguf.stat().st_size / 1e6,
            "decode_tokens_per_s": decode[len(decode) // 2] if decode else 0.0,
            "tokens_per_s": sum(a["tokens"] for a in answers) / sum(a["latency_s"] for a in answers),
            "quality": quality.value, "quality_ci": [quality.low, quality.high], "gap": gap.value,
            "gap_ci": [gap.low, gap.high], "kld_mean": "~0 (the reference weights)", "rows": len(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evaluate_run_id", required=True, help="A finished evaluate run on the bundled model.")
    p.add_argument("--llama_server", required=True, help="The llama-server binary.")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads.")
    p.add_argument("--out", default="", help="Write the row as JSON here (default: log it only).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    row = llama_row(args.evaluate_run_id, args.llama_server, args.threads)
    logger.info("%s", json.dumps(row, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
