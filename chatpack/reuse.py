"""Finding a finished step run to reuse: same entry point, same parameters as MLflow logged them, same code.

MLflow logs an entry point's parameters (defaults included) as ``shlex.quote``-d strings, so the comparison is made
against the values MLflow itself computes for the parameters we would pass. The code version is the git commit of a
clean checkout, or otherwise a hash of the project's files (uncommitted edits then count as new code).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from pathlib import Path

import mlflow
from mlflow.entities import Run

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE_VERSION_TAG = "chatpack.code_version"
CODE_GLOBS = ("MLproject", "python_env.yaml", "conda.yaml", "requirements.txt", "steps/*.py", "chatpack/*.py",
              "data/*.jsonl")


def code_version(root: Path = PROJECT_ROOT) -> str:
    """``git:<commit>`` for a clean git checkout, else ``files:<sha256 of the project's code files>``."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=20)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        if status.returncode == 0 and commit.returncode == 0 and not status.stdout.strip():
            return "git:" + commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for path in sorted(p for g in CODE_GLOBS for p in root.glob(g)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "files:" + digest.hexdigest()[:20]


def logged_params(entry_point: str, params: dict[str, object], root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The parameters exactly as ``mlflow run`` logs them for ``entry_point`` (defaults filled in, shell-quoted)."""
    from mlflow.projects import _project_spec

    entry = _project_spec.load_project(str(root)).get_entry_point(entry_point)
    final, extra = entry.compute_parameters({k: str(v) for k, v in params.items()}, storage_dir=None)
    return {**final, **extra}


def find_reusable_run(experiment_id: str, entry_point: str, params: dict[str, object], version: str,
                      required_tags: dict[str, str] | None = None, root: Path = PROJECT_ROOT) -> Run | None:
    """The newest FINISHED run of ``entry_point`` with these logged params, this code version and these tags."""
    expected = logged_params(entry_point, params, root)
    filter_string = (f"tags.`mlflow.project.entryPoint` = '{entry_point}' and "
                     f"tags.`{CODE_VERSION_TAG}` = '{version}' and attributes.status = 'FINISHED'")
    for run in mlflow.search_runs([experiment_id], filter_string=filter_string, order_by=["start_time DESC"],
                                  max_results=50, output_format="list"):
        if any(run.data.params.get(k) != v for k, v in expected.items()):
            continue
        if any(run.data.tags.get(k) != v for k, v in (required_tags or {}).items()):
            continue
        return run
    return None
