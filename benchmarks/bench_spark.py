"""Spark batch scoring: prompts/s of ``batch_predict``'s scoring on a Spark standalone cluster (a master and 2 workers x
1 core on 127.0.0.1) against ``local[2]``, on the same prompts and the same model, in interleaved rounds.

    python -m benchmarks.bench_spark [--model fixture:tiny-random-phi3] [--prompts 340] [--max_tokens 16]
                                     [--partitions 2] [--rounds 3]

Both settings score through a real ``mlflow server`` (sqlite store and proxied artifacts in a temp folder) to which the
model is logged first, so in both every executor's Python worker loads the model from the tracking server
(``chatpack.spark_scoring.score_on_spark``). Each round runs each setting once (the order alternates between
rounds), in a fresh Spark session: a **cold** pass (what one ``batch_predict`` run pays: Python workers start, each
loads the model; the ``spark_prompts_per_s`` it reports) and then a **warm** pass in the same session (workers and
models already loaded: the scoring rate alone). Session start is timed apart. Every reply is compared with in-process
scoring (greedy); failures (a pass that raised or returned fewer prompts) are counted, never assumed away; ``others``
is the share of the machine's CPU used by processes not ours during the pass. Prints a table; writes
``benchmarks/results/spark.json``.

The helpers here (:func:`standalone_cluster`, :func:`tracking_server`) are what ``tests/test_spark_cluster.py`` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common

LOOPBACK = "127.0.0.1"
# For the driver (PYSPARK_SUBMIT_ARGS, read when pyspark starts its JVM): a cluster job starts only once 2 cores of
# executors are registered (standalone counts toward spark.cores.max), so two partitions run side by side on the two
# workers instead of one after the other on the first executor up; local masters ignore these.
WAIT_FOR_TWO_EXECUTORS = ("--conf spark.cores.max=2 --conf spark.scheduler.minRegisteredResourcesRatio=1.0 "
                          "--conf spark.scheduler.maxRegisteredResourcesWaitingTime=120s pyspark-shell")


def java_missing() -> str | None:
    """Why a Spark JVM cannot start here (no ``java``), or None."""
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").is_file():
        return None
    return None if shutil.which("java") else "Java is not installed (Spark needs a JVM: apt-get install openjdk-17-jre)"


def spark_home() -> Path:
    """The installed ``pyspark`` package folder: a complete Spark distribution (``bin/spark-class``, ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _processes() -> tuple[dict[int, int], dict[int, int]]:
    """(pid -> parent pid, pid -> CPU ticks used) of the live processes, from /proc."""
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parent[pid], cpu[pid] = int(fields[1]), int(fields[11]) + int(fields[12])  # ppid; utime + stime
        except (OSError, ValueError, IndexError):
            continue
    return parent, cpu


def descendants(root: int) -> list[int]:
    """The live processes descended from ``root`` (not itself)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _processes()[0].items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class Cluster:
    master_url: str  # spark://127.0.0.1:PORT
    webui_url: str  # the master's web UI; <webui_url>/json/ lists the workers
    workers: list[Path] = field(default_factory=list)  # each worker's own folder (work dir, HOME, TMPDIR, log)
    logs: list[Path] = field(default_factory=list)  # master log first


def cluster_state(webui_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{webui_url}/json/", timeout=5) as resp:
        return json.load(resp)


@contextlib.contextmanager
def standalone_cluster(folder: Path, workers: int = 2, cores: int = 1, memory: str = "2g",
                       timeout: float = 120.0) -> Iterator[Cluster]:
    """A Spark standalone master and ``workers`` workers (``cores`` cores, ``memory`` each) on 127.0.0.1, started with
    the installed pyspark's ``bin/spark-class``; waits until every worker is registered ALIVE, and always stops every
    process it started: each daemon's process group (a worker's executors are in it), then any descendant still alive
    (pyspark's daemon puts the executors' Python workers in groups of their own).

    Each worker has its own folder under ``folder`` used as its work dir, ``HOME`` and ``TMPDIR`` (what its executors
    and their Python workers inherit), so nothing a worker downloads lands where the driver looks."""
    home = spark_home()
    conf_dir = folder / "conf"  # an empty conf dir: no stray spark-defaults.conf / spark-env.sh
    conf_dir.mkdir(parents=True, exist_ok=True)
    base_env = {**os.environ, "SPARK_HOME": str(home), "SPARK_CONF_DIR": str(conf_dir), "SPARK_LOCAL_IP": LOOPBACK,
                "SPARK_MASTER_HOST": LOOPBACK, "SPARK_DAEMON_MEMORY": "512m", "SPARK_LOG_DIR": str(folder)}
    spark_class = str(home / "bin" / "spark-class")
    procs: list[subprocess.Popen] = []
    files = []

    def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        out = open(log, "w")
        files.append(out)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        port, webui = common.free_port(), common.free_port()
        master_url, webui_url = f"spark://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{webui}"
        cluster = Cluster(master_url, webui_url, logs=[folder / "master.log"])
        master = start([spark_class, "org.apache.spark.deploy.master.Master", "--host", LOOPBACK, "--port", str(port),
                        "--webui-port", str(webui)], cluster.logs[0], base_env)
        common.wait_for_http(f"{webui_url}/json/", timeout=timeout, proc=master)
        for i in range(workers):
            own = folder / f"worker{i}"
            (own / "work").mkdir(parents=True)
            (own / "tmp").mkdir()
            env = {**base_env, "HOME": str(own), "TMPDIR": str(own / "tmp")}
            cluster.workers.append(own)
            cluster.logs.append(own / "worker.log")
            start([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK,
                   "--webui-port", str(common.free_port()), "--cores", str(cores), "--memory", memory,
                   "--work-dir", str(own / "work"), master_url], cluster.logs[-1], env)

        deadline = time.monotonic() + timeout
        while True:
            for proc, log in zip(procs, cluster.logs):
                if proc.poll() is not None:
                    raise RuntimeError(f"a Spark daemon exited with {proc.returncode}; see {log}")
            alive = [w for w in cluster_state(webui_url).get("workers", []) if w.get("state") == "ALIVE"]
            if len(alive) >= workers:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(alive)} of {workers} Spark workers registered within {timeout} s")
            time.sleep(0.5)
        yield cluster
    finally:
        leftovers = [pid for proc in procs for pid in descendants(proc.pid)]
        for proc in reversed(procs):
            common.stop_process(proc, timeout=20, group=True)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for out in files:
            out.close()


@contextlib.contextmanager
def tracking_server(folder: Path, workers: int = 2) -> Iterator[tuple[str, Path]]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite store, artifacts proxied from ``folder/artifacts``); yields its
    URI and its log (uvicorn's access log: one line per request, artifact downloads included)."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log_path = common.free_port(), folder / "mlflow-server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--serve-artifacts",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        common.wait_for_http(f"http://{LOOPBACK}:{port}/health", timeout=120, proc=proc)
        yield f"http://{LOOPBACK}:{port}", log_path
    finally:
        common.stop_process(proc, group=True)
        log.close()


# -- the benchmark ---------------------------------------------------------------------------------------------------
def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the live processes descended from ``root`` (itself included). A process tree, not a
    process group: pyspark's daemon puts its Python workers in a group of their own."""
    tree, cpu = set(descendants(root)) | {root}, _processes()[1]
    return sum(cpu.get(pid, 0) for pid in tree) / common._clock_ticks()


def others_share():
    """A meter of the share of the machine's CPU used by processes that are not this one or its descendants (the
    cluster's daemons, executors and Python workers, local[2]'s Python workers, the tracking server)."""
    me = os.getpid()
    t0, busy0, ours0 = time.perf_counter(), common.busy_cpu_seconds(), tree_cpu_seconds(me)

    def stop() -> float | None:
        busy, wall = common.busy_cpu_seconds(), time.perf_counter() - t0
        if busy is None or busy0 is None or wall <= 0:
            return None
        others = (busy - busy0) - (tree_cpu_seconds(me) - ours0)
        return round(min(1.0, max(0.0, others) / (wall * (os.cpu_count() or 1))), 3)

    return stop


def one_round(master: str, model_uri: str, prompts: list[dict[str, Any]], expected: dict[str, str],
              args: argparse.Namespace) -> dict[str, Any]:
    """A fresh session on ``master``: session start, then a cold and a warm pass over ``prompts``."""
    from chatpack.spark_scoring import score_on_spark, spark_session

    start = time.perf_counter()
    spark = spark_session(master)
    figures: dict[str, Any] = {"session_start_s": round(time.perf_counter() - start, 2)}
    try:
        for phase in ("cold", "warm"):
            meter = others_share()
            start = time.perf_counter()
            try:
                replies = score_on_spark(spark, model_uri, prompts, args.max_tokens, args.partitions).toPandas()
            except Exception as exc:  # counted, never assumed away
                figures[phase] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            seconds = time.perf_counter() - start
            got = dict(zip(replies["id"], replies["reply"]))
            figures[phase] = {
                "seconds": round(seconds, 2), "prompts": len(replies),
                "prompts_per_s": round(len(replies) / seconds, 2),
                "completion_tokens": int(replies["completion_tokens"].sum()),
                "model_copies": int(replies["worker"].nunique()),
                "same_as_in_process": sum(got.get(i) == reply for i, reply in expected.items()),
                "others_cpu_share": meter(),
            }
    finally:
        spark.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="fixture:tiny-random-phi3", help="fetch_model's --model (fixture or bundled).")
    p.add_argument("--prompts", type=int, default=340, help="The first N shipped eval prompts.")
    p.add_argument("--max_tokens", type=int, default=16, help="Reply budget per prompt (greedy).")
    p.add_argument("--partitions", type=int, default=2, help="Spark partitions (= model copies).")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (>= 3).")
    p.add_argument("--out", default=str(common.RESULTS / "spark.json"), help="Results JSON.")
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    if reason := java_missing():
        print(reason, file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["SPARK_LOCAL_IP"] = LOOPBACK
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers are on this machine
    os.environ["PYSPARK_SUBMIT_ARGS"] = WAIT_FOR_TWO_EXECUTORS
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "bench-spark"
    import mlflow
    from mlflow.tracking import MlflowClient

    from chatpack.evaluation.data import DEFAULT_EVAL_DATA
    from chatpack.spark_scoring import read_prompts, score_in_process
    from steps import fetch_model, log_onnx_pyfunc

    prompts = read_prompts(DEFAULT_EVAL_DATA)[: args.prompts]
    machine = common.machine_info(threads=0)
    rounds: dict[str, list[dict[str, Any]]] = {"local[2]": [], "cluster": []}
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp, \
            tracking_server(Path(tmp) / "mlflow") as (uri, _log):
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        MlflowClient().create_experiment("bench-spark")
        assert fetch_model.main(["--model", args.model]) == 0
        assert log_onnx_pyfunc.main(["--fetch_run_id", mlflow.last_active_run().info.run_id]) == 0
        model_uri = MlflowClient().get_run(mlflow.last_active_run().info.run_id).data.tags["chatpack.model_uri"]
        expected = score_in_process(model_uri, prompts, args.max_tokens)
        with standalone_cluster(Path(tmp) / "cluster", workers=2, cores=1, memory="2g") as cluster:
            masters = {"local[2]": "local[2]", "cluster": cluster.master_url}
            for r in range(args.rounds):
                for name in list(masters) if r % 2 == 0 else list(masters)[::-1]:
                    figures = one_round(masters[name], model_uri, prompts, expected, args)
                    rounds[name].append(figures)
                    print(f"round {r + 1} {name}: {json.dumps(figures)}", flush=True)
    rows = []
    for name, figures in rounds.items():
        for phase in ("cold", "warm"):
            ok = [f[phase] for f in figures if "seconds" in f[phase] and f[phase]["prompts"] == len(prompts)]
            rows.append({"setting": name, "phase": phase,
                         "prompts_per_s": common.spread(o["prompts_per_s"] for o in ok),
                         "seconds": common.spread(o["seconds"] for o in ok),
                         "failures": len(figures) - len(ok),
                         "same_as_in_process": [o["same_as_in_process"] for o in ok],
                         "others_cpu_share": common.spread(o["others_cpu_share"] for o in ok),
                         "session_start_s": common.spread(f["session_start_s"] for f in figures)})
    result = {"benchmark": "spark", "machine": machine, "model": args.model, "prompts": len(prompts),
              "max_tokens": args.max_tokens, "partitions": args.partitions, "rounds": args.rounds,
              "cluster": "standalone, master + 2 workers x 1 core, 2g, on 127.0.0.1",
              "model_loaded_by": "each executor Python worker, mlflow.pyfunc.load_model from the tracking server",
              "rows": rows, "per_round": rounds}
    print(f"{'setting':9} {'phase':5} {'prompts/s median (min-max)':>28} {'seconds':>8} {'fail':>4} "
          f"{'same replies':>13} {'others cpu':>10}")
    for row in rows:
        rate, secs, other = row["prompts_per_s"], row["seconds"], row["others_cpu_share"]
        print(f"{row['setting']:9} {row['phase']:5} "
              + (f"{rate['median']:11.2f} ({rate['min']:.2f}-{rate['max']:.2f})".rjust(28) if rate else "-".rjust(28))
              + (f" {secs['median']:8.1f}" if secs else " " * 9) + f" {row['failures']:4d} "
              + f"{'/'.join(map(str, row['same_as_in_process'])) + f' of {len(prompts)}':>20}"
              + (f" {other['median']:10.2f}" if other else ""))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
