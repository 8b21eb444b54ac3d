"""What the stock `mlflow models serve` answers a transformers-flavour model with bad input or `stop` (README's table:
MLflow's behaviour, pinned so a change in MLflow shows up; `serve` answers all of these with 400 or honours them)."""

from __future__ import annotations

import pytest

from steps import log_transformers
from tests.helpers import endpoint, post

pytestmark = pytest.mark.e2e
ONE = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def fixture_endpoint(fixture_fetch_run):
    yield from endpoint(log_transformers, fixture_fetch_run)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"temperature": 0.5}, 400),  # no messages: not a recognised input
        ({"messages": []}, 500),  # "Cannot apply chat template to an empty conversation"
        ({"messages": [{"role": "user", "content": 5}]}, 400),  # schema enforcement
        ({"messages": [{"content": "hi"}]}, 400),  # schema enforcement
        ({"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2}, 200),  # accepted
        ({"messages": ONE, "max_tokens": -1}, 400),  # transformers' ValueError, as a generic 400
        ({"messages": ONE, "max_tokens": 0}, 200),  # ignored: the logged max_new_tokens applies
        ({"messages": ONE, "max_tokens": 4, "stop": ["Hello"]}, 400),  # tokenizer lookup by the source name fails
        ({"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 2}, 200),  # past the 512 context
    ],
)
def test_mlflow_models_serve_answers_as_readme_documents(fixture_endpoint, body, status):
    assert post(fixture_endpoint, body)[0] == status
