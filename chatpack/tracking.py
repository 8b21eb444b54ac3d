"""Small MLflow helpers shared by the steps: run context, idempotent params, tags, and reading other steps' runs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from chatpack.project import CODE_VERSION_TAG, code_version

logger = logging.getLogger(__name__)

TAG_PREFIX = "chatpack."
STEP_TAG = TAG_PREFIX + "step"
MODEL_URI_TAG = TAG_PREFIX + "model_uri"  # the LoggedModel URI a logging step produced


class StepInputError(ValueError):
    """A run id or URI passed between steps does not point at what the step needs."""


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, resume) the step's run, tag it and log its params once."""
    with mlflow.start_run() as run:
        mlflow.set_tags({STEP_TAG: step, CODE_VERSION_TAG: code_version()})
        log_params_once(params)
        yield run


def log_params_once(params: dict[str, Any]) -> None:
    """Log params not yet on the active run.

    ``mlflow run`` logs entry-point params itself (shell-quoted); logging a differently quoted value again would raise,
    so params already present are left as they are.
    """
    run = mlflow.active_run()
    assert run is not None, "log_params_once needs an active run"
    present = MlflowClient().get_run(run.info.run_id).data.params
    missing = {k: str(v) for k, v in params.items() if k not in present}
    if missing:
        mlflow.log_params(missing)


def finished_run(run_id: str, param: str, expected_step: str) -> mlflow.entities.Run:
    """Fetch ``run_id`` and check it is a finished run of ``expected_step``; errors name the parameter."""
    if not run_id:
        raise StepInputError(f"{param}: required (the run id of a finished '{expected_step}' run)")
    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise StepInputError(f"{param}: no run '{run_id}' on tracking server {mlflow.get_tracking_uri()}") from None
    step = run.data.tags.get(STEP_TAG)
    if step != expected_step:
        raise StepInputError(f"{param}: run {run_id} is a '{step}' run, expected a '{expected_step}' run")
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        raise StepInputError(f"{param}: run {run_id} is {run.info.status}, expected FINISHED")
    return run


def local_artifact_dir(artifact_uri: str) -> str | None:
    """The filesystem path behind an artifact URI when the artifact store is local, else None."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        path = url2pathname(parsed.path)
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = artifact_uri
    else:
        return None
    return path if os.path.isdir(path) else None
