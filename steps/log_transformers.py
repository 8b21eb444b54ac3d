"""Entry point ``log_transformers``: log the fetched model as an MLflow transformers model (``task="llm/v1/chat"``).

Inputs (MLproject params, same names as the flags):
  fetch_run_id            id of a finished ``fetch_model`` run (its ``hf_model/`` artifact is the model)
  model_name              LoggedModel name (default ``chat-transformers``)
  max_new_tokens, temperature, top_p, do_sample
                          generation defaults stored in the model's ``model_config``; empty = the model's own default
  registered_model_name   register the model under this name (empty = do not register)
  save_pretrained         true (default): copy the weights into the model. false: store only the hub repo and commit
                          (hub sources only; loading then downloads the weights, so it needs the hub)

Outputs, on the MLflow run (tag ``chatpack.step=log_transformers``):
  a LoggedModel named ``model_name`` (``models:/m-...``), its URI in the tag ``chatpack.model_uri``; the model's
  metadata records the source model, resolved revision and weight sha256; metric ``seconds_log_model``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import mlflow

from chatpack import cli
from chatpack.fetch import fetched_model
from chatpack.tracking import MODEL_URI_TAG, StepInputError, step_run
from chatpack.transformers_flavour import GenerationDefaults, log_transformers_model

STEP = "log_transformers"
logger = logging.getLogger("chatpack.steps.log_transformers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fetch_run_id", required=True, help="Run id of a finished fetch_model run.")
    p.add_argument("--model_name", default="chat-transformers", help="Name of the LoggedModel.")
    p.add_argument("--max_new_tokens", type=cli.optional(int), default=256,
                   help="Default max new tokens (a request's max_tokens overrides); empty = model default.")
    p.add_argument("--temperature", type=cli.optional(float), default=None, help="Default temperature; empty = unset.")
    p.add_argument("--top_p", type=cli.optional(float), default=None, help="Default top_p; empty = unset.")
    p.add_argument("--do_sample", type=cli.optional_bool, default=None,
                   help="Default sampling switch (true/false); empty = model default (greedy for most chat models).")
    p.add_argument("--registered_model_name", default="", help="Register under this name; empty = do not register.")
    p.add_argument("--save_pretrained", type=cli.str2bool, default=True,
                   help="true: copy weights into the model; false: reference the hub repo and commit only.")
    cli.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    defaults = GenerationDefaults(args.max_new_tokens, args.temperature, args.top_p, args.do_sample)
    defaults.check()
    params = {"fetch_run_id": args.fetch_run_id, "model_name": args.model_name,
              "registered_model_name": args.registered_model_name,
              "save_pretrained": str(args.save_pretrained).lower(), **defaults.as_config()}
    fetched = fetched_model(args.fetch_run_id)
    with step_run(STEP, params):
        info = log_transformers_model(fetched, args.model_name, defaults, args.registered_model_name,
                                      args.save_pretrained)
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        logger.info("Logged %s", info.model_uri)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    return cli.run_step(_run, args, (ValueError, StepInputError))


if __name__ == "__main__":
    sys.exit(main())
