"""Keep the Kubernetes variant of the MLproject in sync with the root one.

MLflow's Kubernetes backend only runs ``docker_env`` projects, and one MLproject cannot name both ``python_env`` and
``docker_env``. ``deploy/kubernetes/MLproject`` is therefore generated from the root MLproject: the same entry points,
parameters and commands, with ``docker_env`` naming the image built from the root ``Dockerfile`` (project code in
``/app``, on ``PYTHONPATH``). Regenerate with ``python -m chatpack.deploy``; a test fails when it is stale.
"""

from __future__ import annotations

import sys

from chatpack.project import PROJECT_ROOT

ROOT = PROJECT_ROOT
K8S_MLPROJECT = ROOT / "deploy" / "kubernetes" / "MLproject"
DEFAULT_IMAGE = "phi3-mlflow-env:latest"
_PYTHON_ENV_LINE = "python_env: python_env.yaml"


def render_kubernetes_mlproject(root_mlproject: str, image: str = DEFAULT_IMAGE) -> str:
    if _PYTHON_ENV_LINE not in root_mlproject:
        raise ValueError(f"MLproject: expected the line '{_PYTHON_ENV_LINE}' to replace")
    docker_env = (f"docker_env:\n  image: {image}\n  environment:\n"
                  "    - [\"PYTHONPATH\", \"/app\"]\n    - [\"CHATPACK_CACHE_DIR\", \"/cache/chatpack\"]")
    header = ("# GENERATED from ../../MLproject by `python -m chatpack.deploy`: do not edit by hand.\n"
              "# The Kubernetes variant: same entry points, run in the image built from the root Dockerfile.\n")
    return header + root_mlproject.replace(_PYTHON_ENV_LINE, docker_env)


def main() -> int:
    K8S_MLPROJECT.write_text(render_kubernetes_mlproject((ROOT / "MLproject").read_text()))
    print(f"wrote {K8S_MLPROJECT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
