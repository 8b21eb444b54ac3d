"""The ``main`` entry point's logic: chain the steps with ``mlflow.run`` as nested runs, reusing finished ones.

Steps pass each other only run ids (and, through their tags, model URIs), so each could run on another machine. With
several recipes (a sweep) each gets its own fetch_model and log_onnx_pyfunc runs, reused per recipe, and one evaluate
run compares them all with the transformers model. With ``onnx_source`` (a published onnxruntime-genai build) there is
one ONNX model and no builder run: builder options and sweeps are refused, except ``recipes`` at its default (the
builder sweep), which does not apply and is said so in the log.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from chatpack.build.recipes import Recipe, parse_recipe, parse_recipes
from chatpack.evaluation.data import DEFAULT_EVAL_DATA
from chatpack.evaluation.evaluate import EVAL_DATA_TAG
from chatpack.pipeline.reuse import find_reusable_run
from chatpack.project import PROJECT_ROOT, code_version
from chatpack.sources.onnx_source import check_onnx_source_flags
from chatpack.sources.resolve import sha256_file

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_RECIPES = "int8:block_size=128"  # the default sweep: see docs/steps/main.md


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
    eval_rows: int = 0  # evaluate's sample of the eval set (0 = every row)
    quality_tolerance: float = 0.05
    force: bool = False
    damage: bool = True
    damage_tokens: int = 4096
    recipes: str = DEFAULT_RECIPES
    onnx_source: str = ""  # a published onnxruntime-genai build as the ONNX form (fetch_model's onnx_source)
    onnx_revision: str = "main"

    def check(self) -> None:
        """Cross-flag checks made before any run: builder options and sweeps with ``onnx_source``."""
        specs = [s.strip() for s in self.recipes.split(",") if s.strip()]
        if self.onnx_source.strip() and len(specs) > 1:
            raise ValueError(f"recipes/onnx_source: recipes={self.recipes} is a sweep of builder recipes (one ONNX "
                             "build each); with onnx_source the ONNX form is the one published build: give at most "
                             "one recipe (default), or leave onnx_source empty")
        recipe = "" if self.recipes.strip() == DEFAULT_RECIPES else self.recipes  # the default sweep: not applied
        check_onnx_source_flags(self.onnx_source, self.onnx_revision, self.precision, recipe, self.block_size,
                                self.accuracy_level, recipe_flag="recipes")

    def pipeline_recipes(self) -> list[Recipe]:
        """The recipes to fetch: the sweep, or with ``onnx_source`` the one (default) recipe."""
        self.check()
        if self.onnx_source.strip():
            if self.recipes.strip() == DEFAULT_RECIPES:
                logger.info("onnx_source is set: recipes=%s (the default builder sweep) does not apply; the ONNX "
                            "form is the published build as it is", DEFAULT_RECIPES)
            return [parse_recipe("default", self.precision)]
        return parse_recipes(self.recipes, self.precision, self.block_size, self.accuracy_level)


def registry_name(model: str, requested: str) -> str:
    """``auto`` derives a registry name from the model (``Phi-3-mini-4k-instruct-chat``); empty = no registry."""
    if requested != AUTO:
        return requested
    base = model.rstrip("/").split("/")[-1].split(":")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") + "-chat"


def fetch_params(options: PipelineOptions, recipe: Recipe) -> dict[str, Any]:
    """fetch_model's parameters for one recipe; the recipe's label carries block size and accuracy level, so each
    recipe has one parameter set (and one reusable run)."""
    params = {"model": options.model, "revision": options.revision, "precision": recipe.precision,
              "execution_provider": options.execution_provider, "recipe": recipe.label,
              "damage": str(options.damage).lower(), "damage_tokens": options.damage_tokens}
    if options.onnx_source.strip():  # forwarded only when set; reuse compares them (defaults filled in) either way
        params.update(onnx_source=options.onnx_source.strip(), onnx_revision=options.onnx_revision)
    return params


@dataclass
class _Chain:
    """What the steps of one pipeline share: where they run, the code version, and what was reused."""

    options: PipelineOptions
    experiment_id: str
    version: str
    reused: list[str] = field(default_factory=list)

    def step(self, entry_point: str, params: dict[str, Any], label: str = "",
             required_tags: dict[str, str] | None = None) -> str:
        """Reuse a finished identical run of ``entry_point`` or run it now as a child run; return its run id."""
        if not self.options.force:
            hit = find_reusable_run(self.experiment_id, entry_point, params, self.version, required_tags)
            if hit is not None:
                logger.info("Reusing %s run %s", entry_point, hit.info.run_id)
                self.reused.append(f"{entry_point}[{label}]" if label else entry_point)
                return hit.info.run_id
        logger.info("Running %s %s", entry_point, label)
        submitted = mlflow.run(str(PROJECT_ROOT), entry_point=entry_point,
                               parameters={k: str(v) for k, v in params.items()},
                               env_manager="local", experiment_id=self.experiment_id, synchronous=True)
        return submitted.run_id


def safe(label: str) -> str:
    """A recipe label as a tag-key part (letters, digits, ``_``, ``-``, ``.``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def run_pipeline(options: PipelineOptions) -> dict[str, str]:
    """Run fetch_model and log_onnx_pyfunc per recipe, log_transformers once and evaluate under the active run;
    return step -> run id (the first recipe's runs under the plain step names, every recipe's under
    ``<step>.<recipe>``)."""
    parent = mlflow.active_run()
    assert parent is not None, "run_pipeline needs an active run"
    eval_path = Path(options.eval_data) if options.eval_data else DEFAULT_EVAL_DATA
    if not eval_path.is_file():
        raise ValueError(f"eval_data: {eval_path} does not exist")
    recipes = options.pipeline_recipes()
    # The code version the steps about to run will record, compared with finished runs' tags.
    chain = _Chain(options, parent.info.experiment_id, code_version())
    fetches = {r.label: chain.step("fetch_model", fetch_params(options, r), r.label) for r in recipes}
    first = fetches[recipes[0].label]
    runs = {"fetch_model": first}
    runs["log_transformers"] = chain.step("log_transformers", {"fetch_run_id": first})
    onnx = {label: chain.step("log_onnx_pyfunc", {"fetch_run_id": run_id}, label) for label, run_id in fetches.items()}
    runs["log_onnx_pyfunc"] = onnx[recipes[0].label]
    models = ({"onnx_run_id": runs["log_onnx_pyfunc"]} if len(recipes) == 1
              else {"onnx_run_ids": ",".join(onnx.values())})
    runs["evaluate"] = chain.step("evaluate", {
        "transformers_run_id": runs["log_transformers"], **models,
        "eval_data": options.eval_data, "max_new_tokens": options.max_new_tokens,
        "registered_model_name": registry_name(options.model, options.registered_model_name),
        "quality_tolerance": options.quality_tolerance,
        **({"eval_rows": options.eval_rows} if options.eval_rows else {}),  # forwarded only when set
    }, required_tags={EVAL_DATA_TAG: sha256_file(eval_path)})
    if len(recipes) > 1:
        runs.update({f"fetch_model.{safe(label)}": run_id for label, run_id in fetches.items()})
        runs.update({f"log_onnx_pyfunc.{safe(label)}": run_id for label, run_id in onnx.items()})
    mlflow.set_tags({f"chatpack.run.{step}": run_id for step, run_id in runs.items()})
    mlflow.set_tag("chatpack.reused_steps", ",".join(chain.reused) or "none")
    mlflow.log_metric("steps_reused", len(chain.reused))
    return runs
