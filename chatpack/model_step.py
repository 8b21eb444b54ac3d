"""What the two model-logging steps share: their common flags and the run that wraps ``log_model``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import mlflow

from chatpack import cli
from chatpack.fetch import FetchedModel, fetched_model
from chatpack.generation import GenerationDefaults
from chatpack.tracking import MODEL_URI_TAG, step_run

logger = logging.getLogger(__name__)


def add_model_args(parser: argparse.ArgumentParser, default_name: str) -> None:
    parser.add_argument("--fetch_run_id", required=True, help="Run id of a finished fetch_model run.")
    parser.add_argument("--model_name", default=default_name, help="Name of the LoggedModel.")
    parser.add_argument("--max_new_tokens", type=cli.optional(int), default=256,
                        help="Default max new tokens (a request's max_tokens overrides); empty = model default.")
    parser.add_argument("--temperature", type=cli.optional(float), default=None,
                        help="Default temperature (a request's temperature overrides); empty = unset (greedy).")
    parser.add_argument("--top_p", type=cli.optional(float), default=None,
                        help="Default top_p when sampling; empty = unset.")
    parser.add_argument("--registered_model_name", default="",
                        help="Register the model under this name; empty = do not register.")


def log_model_step(step: str, args: argparse.Namespace, defaults: GenerationDefaults, extra_params: dict[str, Any],
                   log: Callable[[FetchedModel], mlflow.models.model.ModelInfo]) -> str:
    """Check the flags, resolve the fetch run, then log the model in the step's run; return the model URI."""
    defaults.check()
    fetched = fetched_model(args.fetch_run_id)
    params = {"fetch_run_id": args.fetch_run_id, "model_name": args.model_name,
              "registered_model_name": args.registered_model_name, **defaults.set_options(), **extra_params}
    with step_run(step, params):
        info = log(fetched)
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        logger.info("Logged %s", info.model_uri)
    return info.model_uri
