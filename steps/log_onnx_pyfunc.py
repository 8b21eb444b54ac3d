"""Entry point ``log_onnx_pyfunc``: log the fetched ONNX model as a pickle-free chat pyfunc over onnxruntime-genai.

Inputs (MLproject params, same names as the flags):
  fetch_run_id            id of a finished ``fetch_model`` run (its ``onnx_model/`` artifact is the model)
  model_name              LoggedModel name (default ``chat-onnx``)
  max_new_tokens, temperature, top_p
                          generation defaults stored in ``model_config``; empty = unset. A request's own options win.
                          Decoding is greedy unless a temperature > 0 applies.
  registered_model_name   register the model under this name (empty = do not register)

Outputs, on the MLflow run (tag ``chatpack.step=log_onnx_pyfunc``):
  a LoggedModel named ``model_name`` (``models:/m-...``) logged from code
  (``chatpack/flavours/onnx_chat/model_code.py``) with the ONNX folder as artifact ``onnx_model`` and only the runtime
  code (``chatpack.protocol``, ``chatpack.engine``, the PythonModel) as code; its URI in the tag
  ``chatpack.model_uri``; metadata records source, revision, weight sha256, precision, provider and the
  onnxruntime-genai version; the fetch run's damage metrics (``damage_*``) are logged on the LoggedModel, so
  ``mlflow.search_logged_models`` ranks builds by them.
"""

from __future__ import annotations

import argparse
import sys

import mlflow

from chatpack.evaluation.damage import model_metrics
from chatpack.flavours.model_config import GenerationDefaults
from chatpack.flavours.onnx_chat.log_model import log_onnx_model
from chatpack.sources.fetch import FetchedModel
from steps import common

STEP = "log_onnx_pyfunc"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(p, default_name="chat-onnx")
    common.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    defaults = GenerationDefaults(args.max_new_tokens, args.temperature, args.top_p)

    def log(fetched: FetchedModel):
        info = log_onnx_model(fetched, args.model_name, defaults, args.registered_model_name)
        damage = model_metrics(fetched.info)  # the fetch run's damage report, onto the LoggedModel
        if damage:
            mlflow.log_metrics(damage, model_id=info.model_id)
        return info

    common.log_model_step(STEP, args, defaults, {}, log)


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
