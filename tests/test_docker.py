"""Docker, run for real (opt-in: ``make test-docker``): the project's image builds from the Dockerfile, MLflow's docker
backend runs ``fetch_model`` and ``main`` in it against a real tracking server (tracking + proxied artifacts, all the
containers share), and ``serve`` started from the image answers the OpenAI client with an API key.

Needs a Docker daemon (skipped, saying so, when ``docker info`` fails) and the base image: on machines that reach no
container registry, build a local ``python:3.11-slim`` first with ``deploy/docker/base_image.sh``.
``DOCKER_TORCH_INDEX`` (default empty: the base image's own wheels) is passed as the Dockerfile's ``TORCH_INDEX``;
``DOCKER_BASE_IMAGE`` overrides its ``BASE_IMAGE``. Containers use the host's network, so they reach the tracking
server on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from tests.conftest import FIXTURE_MODEL, ROOT, free_port, small_eval_set, tracking_server, wait_for_http

pytestmark = pytest.mark.docker

K8S_PROJECT = ROOT / "deploy" / "kubernetes"
IMAGE = yaml.safe_load((K8S_PROJECT / "MLproject").read_text())["docker_env"]["image"]
REGISTERED = "docker-tiny"
API_KEY = "sk-docker-test-" + uuid.uuid4().hex


def _docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def image() -> str:
    try:
        if _docker("info", check=False).returncode != 0:
            pytest.skip("no Docker daemon answers `docker info` (apt-get install docker.io; dockerd &)")
    except FileNotFoundError:
        pytest.skip("no docker client on PATH")
    base = os.environ.get("DOCKER_BASE_IMAGE", "python:3.11-slim")
    started = time.monotonic()
    built = _docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
                    "--build-arg", f"TORCH_INDEX={os.environ.get('DOCKER_TORCH_INDEX', '')}",
                    "-t", IMAGE, str(ROOT), timeout=1800, check=False)
    assert built.returncode == 0, (
        f"docker build failed; without a registry, make the base image first: deploy/docker/base_image.sh {base}\n"
        + built.stderr[-4000:])
    print(f"\nimage {IMAGE} built in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tracking-server")
    with tracking_server(folder, workers=2) as uri:
        yield uri


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory) -> str:
    """A folder mounted read-only into the containers, holding the small evaluation set (every row shape)."""
    folder = tmp_path_factory.mktemp("eval")
    small_eval_set(folder / "eval.jsonl")
    return str(folder)


def mlflow_run_in_docker(uri: str, entry_point: str, params: dict[str, str], volume: str | None = None,
                         timeout: float = 1500) -> subprocess.CompletedProcess:
    """``mlflow run deploy/kubernetes -e ENTRY -A network=host``: MLflow's docker backend, this machine's daemon."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(K8S_PROJECT), "-e", entry_point, "-A", "network=host"]
    if volume:
        cmd += ["-A", f"volume={volume}"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    print(f"\nmlflow run -e {entry_point} in docker: {time.monotonic() - started:.0f} s")
    return done


def _runs(uri: str, step: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`chatpack.step` = '{step}'", order_by=["start_time DESC"])


def test_fetch_model_runs_in_the_image_through_mlflows_docker_backend(image, server):
    done = mlflow_run_in_docker(server, "fetch_model", {"model": FIXTURE_MODEL, "damage": "false"})
    assert done.returncode == 0, done.stderr[-4000:]
    run = _runs(server, "fetch_model")[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "docker"
    assert run.data.tags["mlflow.docker.image.uri"] == image
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must go through the server"
    assert run.data.tags["chatpack.source_kind"] == "fixture"
    assert run.data.metrics["onnx_model_bytes"] > 0


def test_main_in_the_image_registers_champion_and_challenger(image, server, eval_folder):
    from mlflow.tracking import MlflowClient

    done = mlflow_run_in_docker(server, "main", {
        "model": FIXTURE_MODEL, "max_new_tokens": "4", "registered_model_name": REGISTERED, "recipes": "default",
        "damage": "false", "eval_data": "/eval/eval.jsonl"}, volume=f"{eval_folder}:/eval:ro")
    assert done.returncode == 0, done.stderr[-4000:]
    main = _runs(server, "main")[0]
    assert main.info.status == "FINISHED" and main.data.tags["mlflow.project.env"] == "docker"
    assert set(MlflowClient(server).get_registered_model(REGISTERED).aliases) == {"champion", "challenger"}


def test_serve_from_the_image_answers_the_openai_client_on_the_champion(image, server):
    import openai
    from mlflow.tracking import MlflowClient

    if not MlflowClient(server).search_registered_models(f"name = '{REGISTERED}'"):
        pytest.skip("needs the champion that test_main_in_the_image_registers_champion_and_challenger registers")
    port, name = free_port(), f"chatpack-serve-{uuid.uuid4().hex[:8]}"
    _docker("run", "-d", "--rm", "--name", name, "--network", "host", "-e", f"MLFLOW_TRACKING_URI={server}",
            "-e", f"CHATPACK_API_KEY={API_KEY}", image, "python", "-m", "steps.serve",
            "--model_uri", f"models:/{REGISTERED}@champion", "--host", "127.0.0.1", "--port", str(port))
    try:
        started = time.monotonic()
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", timeout=300)
        except TimeoutError:
            raise AssertionError(_docker("logs", name, check=False).stderr[-4000:]) from None
        print(f"\nserve in docker ready in {time.monotonic() - started:.0f} s")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
        reply = client.chat.completions.create(model=REGISTERED, max_tokens=8,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert isinstance(reply.choices[0].message.content, str)
        assert 1 <= reply.usage.completion_tokens <= 8
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=REGISTERED, max_tokens=8, stream=True, messages=[{"role": "user", "content": "Say hello."}])
            if c.choices]
        assert "".join(pieces) == reply.choices[0].message.content, "greedy: streamed and whole replies agree"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0) \
                .chat.completions.create(model=REGISTERED, max_tokens=4, messages=[{"role": "user", "content": "x"}])
        logs = _docker("logs", name, check=False)
        assert API_KEY not in logs.stdout + logs.stderr, "the API key must never be logged"
    finally:
        _docker("rm", "-f", name, check=False)
