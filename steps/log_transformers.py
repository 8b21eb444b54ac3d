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
import sys

from chatpack.flavours.model_config import GenerationDefaults
from chatpack.flavours.transformers_chat import log_transformers_model
from steps import common

STEP = "log_transformers"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(p, default_name="chat-transformers")
    p.add_argument("--do_sample", type=common.optional_bool, default=None,
                   help="Sample (true) or decode greedily (false); empty = sample only if temperature > 0.")
    p.add_argument("--save_pretrained", type=common.str2bool, default=True,
                   help="true: copy weights into the model; false: reference the hub repo and commit only.")
    common.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    defaults = GenerationDefaults(args.max_new_tokens, args.temperature, args.top_p, args.do_sample)
    common.log_model_step(STEP, args, defaults, {"save_pretrained": str(args.save_pretrained).lower()},
                   lambda fetched: log_transformers_model(fetched, args.model_name, defaults,
                                                          args.registered_model_name, args.save_pretrained))


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
