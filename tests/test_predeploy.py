"""Pre-deploy check: each logged model answers its serving input example as `mlflow models serve` would
(`mlflow.models.validate_serving_input`), and logging an example does not slow logging down."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.models import Model, validate_serving_input
from mlflow.models import utils as model_utils
from openai.types.chat import ChatCompletion

from steps import log_onnx_pyfunc, log_transformers
from tests.helpers import logged


def serving_input(model_uri: str) -> str | None:
    local = mlflow.artifacts.download_artifacts(model_uri)
    return Model.load(str(Path(local) / "MLmodel")).get_serving_input(local)


@pytest.mark.parametrize("step", [log_transformers, log_onnx_pyfunc], ids=["transformers", "onnx"])
def test_each_logged_model_answers_its_serving_input_example(step, fixture_fetch_run):
    check = model_utils._validate_serving_input  # what MLflow runs at log time; skipped for the transformers flavour
    uri = logged(step, fixture_fetch_run, "--max_new_tokens", "8")
    assert model_utils._validate_serving_input is check  # and put back afterwards
    example = serving_input(uri)
    assert example is not None, "each flavour is logged with an input example"
    replies = validate_serving_input(uri, example)
    reply = ChatCompletion.model_validate(replies[0])
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
