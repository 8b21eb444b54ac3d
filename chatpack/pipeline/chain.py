"""The ``main`` entry point's logic: chain the steps with ``mlflow.run`` as nested runs, reusing finished ones.

Steps pass each other only run ids (and, through their tags, model URIs), so each could run on another machine.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from chatpack.build.recipes import Recipe, parse_recipes
from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.evaluation.evaluate import EVAL_DATA_TAG
from chatpack.pipeline.reuse import find_reusable_run
from chatpack.project import PROJECT_ROOT, code_version
from chatpack.sources.resolve import sha256_file

logger = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class PipelineOptions:
    model: str
    revision: str = "main"
    precision: str = "int4"
    execution_provider: str = "cpu"
    block_size: int = 0
    accuracy_level: int = 0
    registered_model_name: str = AUTO
    eval_data: str = ""
    max_new_tokens: int = 64
    quality_tolerance: float = 0.05
    force: bool = False
    damage: bool = True
    damage_tokens: int = 4096
    recipes: str = "default"


def registry_name(model: str, requested: str) -> str:
    """``auto`` derives a registry name from the model (``Phi-3-mini-4k-instruct-chat``); empty = no registry."""
    if requested != AUTO:
        return requested
    base = model.rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") + "-chat"


def fetch_params(options: PipelineOptions, recipe: Recipe) -> dict[str, Any]:
    """fetch_model's parameters for one recipe; the recipe's label carries block size and accuracy level, so each
    recipe has one parameter set (and one reusable run)."""
    return {"model": options.model, "revision": options.revision, "precision": recipe.precision,
            "execution_provider": options.execution_provider, "recipe": recipe.label,
            "damage": str(options.damage).lower(), "damage_tokens": options.damage_tokens}


def run_or_reuse(entry_point: str, params: dict[str, Any], options: PipelineOptions, experiment_id: str, version: str,
             reused: dict[str, str], required_tags: dict[str, str] | None = None) -> str:
    """Reuse a finished identical run of ``entry_point`` or run it now as a child run; return its run id."""
    if not options.force:
        hit = find_reusable_run(experiment_id, entry_point, params, version, required_tags)
        if hit is not None:
            logger.info("Reusing %s run %s", entry_point, hit.info.run_id)
            reused[entry_point] = hit.info.run_id
            return hit.info.run_id
    logger.info("Running %s", entry_point)
    submitted = mlflow.run(str(PROJECT_ROOT), entry_point=entry_point,
                           parameters={k: str(v) for k, v in params.items()},
                           env_manager="local", experiment_id=experiment_id, synchronous=True)
    return submitted.run_id


def run_pipeline(options: PipelineOptions) -> dict[str, str]:
    """Run fetch_model, log_transformers, log_onnx_pyfunc and evaluate under the active run; return step -> run id."""
    parent = mlflow.active_run()
    assert parent is not None, "run_pipeline needs an active run"
    experiment_id = parent.info.experiment_id
    eval_path = Path(options.eval_data) if options.eval_data else DEFAULT_EVAL_DATA
    if not eval_path.is_file():
        raise ValueError(f"eval_data: {eval_path} does not exist")
    recipes = parse_recipes(options.recipes, options.precision, options.block_size, options.accuracy_level)
    if len(recipes) > 1:
        raise ValueError(f"recipes: one recipe per run, got {len(recipes)}")
    version = code_version()  # what the steps about to run will record; compared with finished runs' tags
    reused: dict[str, str] = {}
    runs: dict[str, str] = {}
    runs["fetch_model"] = run_or_reuse("fetch_model", fetch_params(options, recipes[0]), options, experiment_id,
                                       version, reused)
    runs["log_transformers"] = run_or_reuse("log_transformers", {"fetch_run_id": runs["fetch_model"]}, options,
                                        experiment_id, version, reused)
    runs["log_onnx_pyfunc"] = run_or_reuse("log_onnx_pyfunc", {"fetch_run_id": runs["fetch_model"]}, options,
                                       experiment_id, version, reused)
    runs["evaluate"] = run_or_reuse("evaluate", {
        "transformers_run_id": runs["log_transformers"], "onnx_run_id": runs["log_onnx_pyfunc"],
        "eval_data": options.eval_data, "max_new_tokens": options.max_new_tokens,
        "registered_model_name": registry_name(options.model, options.registered_model_name),
        "quality_tolerance": options.quality_tolerance,
    }, options, experiment_id, version, reused, required_tags={EVAL_DATA_TAG: sha256_file(eval_path)})
    mlflow.set_tags({f"chatpack.run.{step}": run_id for step, run_id in runs.items()})
    mlflow.set_tag("chatpack.reused_steps", ",".join(reused) or "none")
    mlflow.log_metric("steps_reused", len(reused))
    return runs
