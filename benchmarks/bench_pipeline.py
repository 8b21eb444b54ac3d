"""What ``main`` costs, step by step: wall time, peak memory and disk written by fetch_model, log_transformers,
log_onnx_pyfunc and evaluate, measured from outside while ``python -m steps.main`` runs.

    python -m benchmarks.bench_pipeline --label phi3-mini -- --model fixture:random-phi3-mini-4k --eval_rows 16

Everything after ``--`` goes to ``steps.main`` as it is. The run uses the current tracking store
(``MLFLOW_TRACKING_URI``) and ``CHATPACK_CACHE_DIR``; give it fresh ones to measure a first run (reuse skips steps).
Once a second the script reads every process under ``main`` (``psutil``): a process belongs to the step whose
``steps.<name>`` command line it or an ancestor has (the builder is fetch_model's child), and a step's peak is the
largest sum of its processes' resident memory; disk is the bytes under ``--watch`` folders (the tracking store's
artifacts and the cache, by default), and a step's figure is the growth while it ran. Wall times are the MLflow
runs' own start and end. Writes ``benchmarks/results/pipeline-<label>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

STEPS = ("fetch_model", "log_transformers", "log_onnx_pyfunc", "evaluate")


def folder_bytes(folders: list[Path]) -> int:
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512  # on disk: sparse files count less
                except OSError:
                    pass
    return total


def step_of(proc, cache: dict[int, str | None]) -> str | None:
    """The step a process works for: the first ``steps.<name>`` on its own or an ancestor's command line."""
    import psutil

    chain = []
    try:
        while proc is not None and proc.pid not in cache:
            chain.append(proc)
            line = " ".join(proc.cmdline())
            found = next((s for s in STEPS if f"steps.{s}" in line or f"steps/{s}.py" in line), None)
            if found:
                break
            proc = proc.parent()
        else:
            found = cache.get(proc.pid) if proc is not None else None
    except psutil.Error:
        found = None
    for p in chain:
        cache[p.pid] = found
    return found


def sample(root, cache: dict[int, str | None]) -> dict[str, int]:
    """Resident bytes per step now, summed over the step's processes."""
    import psutil

    rss: dict[str, int] = {}
    try:
        procs = root.children(recursive=True)
    except psutil.Error:
        return rss
    for proc in procs:
        step = step_of(proc, cache)
        if step:
            try:
                rss[step] = rss.get(step, 0) + proc.memory_info().rss
            except psutil.Error:
                pass
    return rss


def step_runs(main_run_id: str) -> dict[str, dict[str, Any]]:
    """Each step's run under ``main`` (its own or the reused one's): wall seconds from MLflow's start and end."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = client.get_run(main_run_id).data.tags
    reused = set(tags.get("chatpack.reused_steps", "").split(","))
    out = {}
    for step in STEPS:
        run_id = tags.get(f"chatpack.run.{step}")
        if run_id:
            info = client.get_run(run_id).info
            out[step] = {"run_id": run_id, "reused": step in reused,
                         "wall_s": round((info.end_time - info.start_time) / 1000, 1) if info.end_time else None}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True, help="Names the results file: pipeline-<label>.json.")
    p.add_argument("--watch", action="append", default=[],
                   help="A folder whose growth counts as disk written (repeatable; default: ./mlruns, the sqlite "
                        "store's folder and $CHATPACK_CACHE_DIR).")
    p.add_argument("--interval", type=float, default=1.0, help="Seconds between samples.")
    p.add_argument("--out", default="", help="Results JSON (default: benchmarks/results/pipeline-<label>.json).")
    p.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then steps.main's own flags.")
    args = p.parse_args(argv)
    args.main_args = [a for a in args.main_args if a != "--"] if args.main_args[:1] == ["--"] else args.main_args
    return args


def default_watch() -> list[Path]:
    folders = [Path("mlruns").resolve()]
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///"):
        folders.append(Path(uri[len("sqlite:///"):]).parent)
    if os.environ.get("CHATPACK_CACHE_DIR"):
        folders.append(Path(os.environ["CHATPACK_CACHE_DIR"]))
    unique = []
    for f in folders:
        if not any(f == u or u in f.parents for u in unique):
            unique = [u for u in unique if f not in u.parents] + [f]
    return unique


def main(argv: list[str] | None = None) -> int:
    import psutil

    args = parse_args(argv)
    watch = [Path(w).resolve() for w in args.watch] or default_watch()
    started, disk0 = time.time(), folder_bytes(watch)
    log = Path(args.out or common.RESULTS / f"pipeline-{args.label}.json").with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "steps.main", *args.main_args], cwd=common.ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    root, cache = psutil.Process(proc.pid), {}
    peaks = {s: 0 for s in STEPS}
    disk = {s: {"first": None, "last": None} for s in STEPS}
    whole_peak, last_disk = 0, disk0
    while proc.poll() is None:
        rss = sample(root, cache)
        whole_peak = max(whole_peak, sum(rss.values()))
        now = folder_bytes(watch)
        for step, value in rss.items():
            peaks[step] = max(peaks[step], value)
            if disk[step]["first"] is None:
                disk[step]["first"] = last_disk  # the disk as the step started
            disk[step]["last"] = now
        last_disk = now
        time.sleep(args.interval)
    end_disk = folder_bytes(watch)
    if proc.returncode != 0:
        raise SystemExit(f"steps.main exited {proc.returncode}; its output: {log}")
    from mlflow import MlflowClient

    main_run = MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string="tags.`chatpack.step` = 'main'", order_by=["attributes.start_time DESC"], max_results=1)[0]
    runs = step_runs(main_run.info.run_id)
    steps = {}
    for step in STEPS:
        first, last = disk[step]["first"], disk[step]["last"]
        steps[step] = {**runs.get(step, {}), "peak_rss_gib": round(peaks[step] / 2**30, 2),
                       "disk_written_gib": round((last - first) / 2**30, 2) if first is not None else None}
    payload = {"benchmark": "pipeline", "machine": common.machine_info(None, {}),
               "config": {"label": args.label, "main_args": args.main_args, "interval_s": args.interval,
                          "watched": [str(w) for w in watch]},
               "main_run_id": main_run.info.run_id, "wall_s": round(time.time() - started, 1),
               "peak_rss_gib_all_steps": round(whole_peak / 2**30, 2),
               "disk_written_gib": round((end_disk - disk0) / 2**30, 2), "steps": steps}
    out_path = Path(args.out or common.RESULTS / f"pipeline-{args.label}.json")
    common.write_json(out_path, payload)
    print(pipeline_table(payload))
    return 0


def pipeline_table(payload: dict[str, Any]) -> str:
    rows = ["| step | wall s | peak RSS GiB | disk written GiB | reused |", "|---|---|---|---|---|"]
    for step, s in payload["steps"].items():
        rows.append(f"| {step} | {s.get('wall_s', '')} | {s['peak_rss_gib']} | {s['disk_written_gib']} | "
                    f"{'yes' if s.get('reused') else 'no'} |")
    rows.append(f"| **main** | {payload['wall_s']} | {payload['peak_rss_gib_all_steps']} | "
                f"{payload['disk_written_gib']} | |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
