"""Entry point ``main`` (the default): fetch, log both flavours, evaluate and crown a champion, in one run.

Inputs (MLproject params, same names as the flags): ``model``, ``revision``, ``precision``, ``execution_provider``,
``block_size``, ``accuracy_level`` (as in ``fetch_model``), ``registered_model_name`` (``auto`` = derived from the
model, e.g. ``Phi-3-mini-4k-instruct-chat``; empty = no registry), ``eval_data``, ``max_new_tokens``,
``eval_rows``, ``quality_tolerance`` (as in ``evaluate``), ``recipes`` (comma-separated fetch_model recipes: a
sweep, one ONNX model per recipe), ``damage``/``damage_tokens`` (as in ``fetch_model``),
``onnx_source``/``onnx_revision`` (as in ``fetch_model``: a published onnxruntime-genai build as the ONNX form,
forwarded to fetch_model only when set; then ``recipes`` must be one recipe or its default, which does not apply, and
precision/block_size/accuracy_level stay at
their defaults) and ``force`` (true = rerun every step).

Each step runs through ``mlflow.run(..., env_manager="local")`` as a child run of this one, passing only run ids. A
step is skipped, and its earlier run reused, when a FINISHED run exists with the same entry point, the same
parameters as MLflow logged them and the same code version (tag ``chatpack.code_version``).

Outputs, on this run (tag ``chatpack.step=main``): tags ``chatpack.run.<step>`` (the run id each step used; in a sweep
also ``chatpack.run.fetch_model.<recipe>`` and ``chatpack.run.log_onnx_pyfunc.<recipe>``), ``chatpack.reused_steps``;
metric ``steps_reused``. The evaluate run holds the comparison, the sweep table and plot, and the champion.
"""

from __future__ import annotations

import argparse
import sys

from mlflow.exceptions import ExecutionException

from chatpack.pipeline.chain import AUTO, PipelineOptions, registry_name, run_pipeline
from chatpack.tracking import step_run
from steps import common

STEP = "main"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = PipelineOptions(model="microsoft/Phi-3-mini-4k-instruct")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=d.model, help="Hub id, local folder, bundled:<name> or fixture:<name>.")
    p.add_argument("--revision", default=d.revision, help="Hub branch, tag or commit (hub ids only).")
    p.add_argument("--precision", default=d.precision, help="ONNX precision: int4, int8, fp16 or fp32.")
    p.add_argument("--execution_provider", default=d.execution_provider, help="cpu or cuda.")
    p.add_argument("--block_size", type=int, default=0, help="int4/int8 block size for the builder; 0 = default.")
    p.add_argument("--accuracy_level", type=int, default=0, help="int4/int8 accuracy level; 0 = builder default.")
    p.add_argument("--registered_model_name", default=AUTO,
                   help="Registry name for champion/challenger; 'auto' derives it from the model; empty = none.")
    p.add_argument("--eval_data", default="", help="JSONL eval set; empty = the one shipped in data/.")
    p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens, help="Reply budget per eval prompt.")
    p.add_argument("--eval_rows", type=int, default=d.eval_rows,
                   help="Evaluate only this many eval rows, taken in turn from each category; 0 = every row.")
    p.add_argument("--quality_tolerance", type=float, default=d.quality_tolerance,
                   help="Max quality deficit (0-1) the faster flavour may have and still win.")
    p.add_argument("--force", type=common.str2bool, default=False, help="true: rerun every step, reuse nothing.")
    p.add_argument("--recipes", default=d.recipes,
                   help="ONNX recipes, comma-separated (each as fetch_model's recipe): one ONNX model per recipe, all "
                        "evaluated against the transformers model (a sweep).")
    p.add_argument("--damage", type=common.str2bool, default=d.damage,
                   help="Damage report of each ONNX build against the transformers model (true/false).")
    p.add_argument("--damage_tokens", type=int, default=d.damage_tokens,
                   help="Corpus tokens the damage report scores; 0 = the whole corpus.")
    p.add_argument("--onnx_source", default=d.onnx_source,
                   help="Empty: build the ONNX form with the builder. '<hub id or local folder>[:<subfolder>]': use "
                        "that published onnxruntime-genai build as the ONNX form (as in fetch_model).")
    p.add_argument("--onnx_revision", default=d.onnx_revision,
                   help="Hub onnx_source only: branch, tag or 40-hex commit to pin.")
    common.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    options = PipelineOptions(args.model, args.revision, args.precision, args.execution_provider, args.block_size,
                              args.accuracy_level, args.registered_model_name, args.eval_data,
                              args.max_new_tokens, args.eval_rows, args.quality_tolerance, args.force, args.damage,
                              args.damage_tokens, args.recipes, args.onnx_source, args.onnx_revision)
    options.check()  # fail on contradicting flags before a run is created
    params = {k: v for k, v in vars(args).items() if k != "verbose"}
    params["force"] = str(args.force).lower()
    params["damage"] = str(args.damage).lower()
    with step_run(STEP, params):
        runs = run_pipeline(options)
        name = registry_name(options.model, options.registered_model_name)
        print("\nruns: " + ", ".join(f"{step}={run_id}" for step, run_id in runs.items()))
        if name:
            print(f"champion: mlflow.pyfunc.load_model('models:/{name}@champion')")


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv, (ValueError, ExecutionException))


if __name__ == "__main__":
    sys.exit(main())
