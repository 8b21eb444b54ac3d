"""What the step scripts share: flag parsing, logging set-up, the ``main`` wrapper, and the model-logging steps' flags
and run."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import mlflow

from chatpack.flavours.model_config import GenerationDefaults
from chatpack.sources.fetch import FetchedModel, fetched_model
from chatpack.tracking import MODEL_URI_TAG, step_run

logger = logging.getLogger(__name__)


def str2bool(value: str) -> bool:
    """Parse MLflow's string params ``true``/``false`` (also 1/0, yes/no)."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")


def run_main(parse_args, body, argv: list[str] | None, expected: tuple[type[BaseException], ...] = (ValueError,)
             ) -> int:
    """A step's ``main``: parse flags, configure logging, run the body. An expected input error becomes one line
    on stderr and exit code 2, not a stack trace."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        body(args)
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def optional(kind):
    """An argparse type where an empty string means "not set" (MLproject params cannot default to None)."""

    def parse(value: str):
        if str(value).strip() == "":
            return None
        return kind(value)

    parse.__name__ = f"optional {kind.__name__}"
    return parse


def optional_bool(value: str) -> bool | None:
    return None if str(value).strip() == "" else str2bool(value)


def add_model_args(parser: argparse.ArgumentParser, default_name: str) -> None:
    parser.add_argument("--fetch_run_id", required=True, help="Run id of a finished fetch_model run.")
    parser.add_argument("--model_name", default=default_name, help="Name of the LoggedModel.")
    parser.add_argument("--max_new_tokens", type=optional(int), default=256,
                        help="Default max new tokens (a request's max_tokens overrides); empty = model default.")
    parser.add_argument("--temperature", type=optional(float), default=None,
                        help="Default temperature (a request's temperature overrides); empty = unset (greedy).")
    parser.add_argument("--top_p", type=optional(float), default=None,
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
