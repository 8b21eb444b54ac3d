"""Quantisation recipes: parsing, the builder options they give, combinations refused up front, and fixture builds."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from chatpack.build.recipes import parse_recipe, parse_recipes
from steps import fetch_model
from tests.conftest import FIXTURE_MODEL, run_fetch


@pytest.mark.parametrize(("spec", "precision", "label", "options"), [
    ("default", "int4", "default", {}),
    ("", "int4", "default", {}),
    ("k_quant_mixed", "int4", "k_quant_mixed", {"algo_config": "k_quant_mixed"}),
    ("rtn_last", "int4", "rtn_last", {"algo_config": "rtn_last"}),
    ("int8", "int8", "int8", {}),
    ("int8:block_size=128", "int8", "int8:block_size=128", {"block_size": "128"}),
    ("default:shared_embeddings=false:symmetric=false", "int4", "default:symmetric=false:shared_embeddings=false",
     {"is_symmetric": "false", "shared_embeddings": "false"}),
])
def test_recipes_map_to_builder_options(spec, precision, label, options):
    recipe = parse_recipe(spec)
    assert (recipe.precision, recipe.label, recipe.extra_options()) == (precision, label, options)


def test_separate_parameters_fold_into_the_recipe():
    recipe = parse_recipe("default", precision="int4", block_size=128, accuracy_level=4)
    assert recipe.label == "default:block_size=128:accuracy_level=4"
    assert parse_recipe("default", precision="fp16").precision == "fp16"
    assert [r.label for r in parse_recipes("default, k_quant_mixed,int8")] == ["default", "k_quant_mixed", "int8"]


@pytest.mark.parametrize(("spec", "kwargs", "message"), [
    ("default:symmetric=false", {}, "symmetric=false needs shared_embeddings=false"),
    ("k_quant_mixed:block_size=128", {}, "k-quant recipes need block_size=32"),
    ("k_quant", {"block_size": 64}, "k-quant recipes need block_size=32"),
    ("int8", {"precision": "fp16"}, "recipe/precision: recipe int8 builds int8, not precision=fp16"),
    ("k_quant_mixed", {"precision": "int8"}, "recipe k_quant_mixed builds int4"),
    ("default:symmetric=false:shared_embeddings=false", {"precision": "fp32"}, "only apply to int4/int8"),
    ("default", {"precision": "fp16", "block_size": 32}, "block_size/accuracy_level"),
    ("default:block_size=100", {}, "block_size: 100 is not one of"),
    ("default:block_size=64", {"block_size": 128}, "recipe/block_size: the recipe says block_size=64"),
    ("gptq", {}, "recipe: 'gptq' is not one of default, rtn_last, k_quant, k_quant_mixed, int8"),
    ("default:group=32", {}, "'group=32' in 'default:group=32' is not option=value"),
    ("default:symmetric=maybe", {}, "recipe option symmetric: expected true or false"),
])
def test_bad_combinations_are_refused_naming_the_options(spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe(spec, **kwargs)


def test_a_sweep_lists_each_recipe_once():
    with pytest.raises(ValueError, match="recipes: 'int8' is listed twice"):
        parse_recipes("int8,default,int8")
    with pytest.raises(ValueError, match="recipes: empty"):
        parse_recipes(" , ")


def test_fetch_model_refuses_a_bad_recipe_before_any_run(capsys):
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    assert fetch_model.main(["--model", FIXTURE_MODEL, "--recipe", "default:symmetric=false"]) == 2
    assert "shared_embeddings=false" in capsys.readouterr().err
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


@pytest.mark.parametrize("spec", ["k_quant_mixed", "int8",
                                  "default:symmetric=false:shared_embeddings=false"])
def test_fixture_builds_each_recipe_with_its_damage_report(spec):
    run_id = run_fetch("--model", FIXTURE_MODEL, "--recipe", spec, "--damage_tokens", "512")
    run = MlflowClient().get_run(run_id)
    recipe = parse_recipe(spec)
    assert run.data.tags["chatpack.recipe"] == recipe.label
    assert run.data.tags["chatpack.precision"] == recipe.precision
    assert json.loads(run.data.tags["chatpack.builder_options"]) == recipe.extra_options()
    assert 0 <= run.data.metrics["damage_top1_agreement"] <= 1 and run.data.metrics["damage_kld_mean"] >= 0
