"""Finding a finished step run to reuse: same entry point, same parameters as MLflow logged them, same code.

MLflow logs an entry point's parameters (defaults included) as ``shlex.quote``-d strings, so the comparison is made
against the values MLflow itself computes for the parameters we would pass; the code version comes from
:func:`chatpack.project.code_version`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.entities import Run

from chatpack.project import CODE_VERSION_TAG, PROJECT_ROOT

logger = logging.getLogger(__name__)

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
