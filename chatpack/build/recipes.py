"""Quantisation recipes: named onnxruntime-genai builder settings, with the combinations known to fail refused.

A recipe spec is a name, optionally followed by ``:option=value`` pairs::

    default                      the builder's defaults for the precision (int4: RTN-style, block 32)
    rtn_last                     int4 RTN, the last MatMul (the output layer, tied to the embeddings) in int8
    k_quant                      int4 k-quant
    k_quant_mixed                int4 k-quant, the last MatMul and some layers in int8
    int8                         int8 weights everywhere (the builder's int8 precision)
    default:block_size=128       any recipe with options: block_size, accuracy_level, symmetric, shared_embeddings

Refused up front, naming the options (each fails in the builder or at load time on onnxruntime-genai 0.18):
``symmetric=false`` without ``shared_embeddings=false`` (tied-embedding models such as SmolLM2 then build a model
that does not load), k-quant recipes with a block size other than 32 (the builder fails reshaping the scales), and
quantisation options on fp16/fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatpack.build.onnx_builder import EXECUTION_PROVIDERS, check_build_options

QUANTISED = ("int4", "int8")
# name -> (precision, builder extra options)
RECIPES: dict[str, tuple[str | None, dict[str, str]]] = {
    "default": (None, {}),  # None: the precision parameter decides
    "rtn_last": ("int4", {"algo_config": "rtn_last"}),
    "k_quant": ("int4", {"algo_config": "k_quant"}),
    "k_quant_mixed": ("int4", {"algo_config": "k_quant_mixed"}),
    "int8": ("int8", {}),
}
OPTIONS = ("block_size", "accuracy_level", "symmetric", "shared_embeddings")
DEFAULT_PRECISION = "int4"


@dataclass(frozen=True)
class Recipe:
    name: str = "default"
    precision: str = DEFAULT_PRECISION
    block_size: int = 0  # 0 = the builder's default (32)
    accuracy_level: int = 0  # 0 = the builder's default (4 on CPU)
    symmetric: bool | None = None  # None = the builder's default (symmetric)
    shared_embeddings: bool | None = None  # None = the builder's default (true for tied embeddings)

    @property
    def label(self) -> str:
        """The canonical spec: the name, then the options that differ from the defaults, in a fixed order."""
        parts = [self.name]
        for key in OPTIONS:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or value != 0):
                parts.append(f"{key}={str(value).lower()}")
        return ":".join(parts)

    def extra_options(self, trust_remote_code: bool = False) -> dict[str, str]:
        """The builder's ``--extra_options`` (empty for the plain default recipe: the builder's own defaults)."""
        options = dict(RECIPES[self.name][1])
        if self.block_size:
            options["block_size"] = str(self.block_size)
        if self.accuracy_level:
            options["accuracy_level"] = str(self.accuracy_level)
        if self.symmetric is not None:
            options["is_symmetric"] = str(self.symmetric).lower()
        if self.shared_embeddings is not None:
            options["shared_embeddings"] = str(self.shared_embeddings).lower()
        if trust_remote_code:
            options["hf_remote"] = "true"
        return options

    def check(self) -> None:
        """Refuse combinations that fail in the builder or at load time, naming the options."""
        check_build_options(self.precision, EXECUTION_PROVIDERS[0], self.block_size, self.accuracy_level)
        if self.precision not in QUANTISED and (self.symmetric is not None or self.shared_embeddings is not None):
            raise ValueError(f"recipe {self.label}: symmetric/shared_embeddings only apply to int4/int8, "
                             f"not precision={self.precision}")
        if self.symmetric is False and self.shared_embeddings is not False:
            raise ValueError(f"recipe {self.label}: symmetric=false needs shared_embeddings=false: with shared "
                             "embeddings (the builder's default for tied-embedding models such as SmolLM2) the "
                             "asymmetric build fails to load (uint8 vs float at /model/embed_tokens/Reshape)")
        if self.name.startswith("k_quant") and self.block_size not in (0, 32):
            raise ValueError(f"recipe {self.label}: k-quant recipes need block_size=32 (the default); the builder "
                             f"fails reshaping the scales with block_size={self.block_size}")


def _bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"recipe option {key}: expected true or false, got '{value}'")
    return lowered == "true"


def parse_recipe(spec: str, precision: str = DEFAULT_PRECISION, block_size: int = 0,
                 accuracy_level: int = 0) -> Recipe:
    """A checked :class:`Recipe` from a spec plus the separate ``precision``/``block_size``/``accuracy_level``
    parameters (which must not contradict the spec)."""
    name, *pairs = [p.strip() for p in (spec.strip() or "default").split(":")]
    if name not in RECIPES:
        raise ValueError(f"recipe: '{name}' is not one of {', '.join(RECIPES)}")
    fixed = RECIPES[name][0]
    if fixed and precision not in (DEFAULT_PRECISION, fixed):
        raise ValueError(f"recipe/precision: recipe {name} builds {fixed}, not precision={precision}")
    values: dict[str, object] = {"block_size": block_size, "accuracy_level": accuracy_level}
    given: set[str] = set()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in OPTIONS:
            raise ValueError(f"recipe: '{pair}' in '{spec}' is not option=value with an option among "
                             f"{', '.join(OPTIONS)}")
        if key in given:
            raise ValueError(f"recipe: option {key} given twice in '{spec}'")
        given.add(key)
        if key in ("block_size", "accuracy_level"):
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"recipe option {key}: expected an integer, got '{value}'") from None
            if values[key] and values[key] != number:
                raise ValueError(f"recipe/{key}: the recipe says {key}={number}, the {key} parameter says "
                                 f"{values[key]}")
            values[key] = number
        else:
            values[key] = _bool(key, value)
    recipe = Recipe(name, fixed or precision, **values)  # type: ignore[arg-type]
    recipe.check()
    return recipe


def parse_recipes(specs: str, precision: str = DEFAULT_PRECISION, block_size: int = 0,
                  accuracy_level: int = 0) -> list[Recipe]:
    """A comma-separated list of specs (a sweep); duplicates (same label and precision) are refused."""
    recipes = [parse_recipe(s, precision, block_size, accuracy_level) for s in specs.split(",") if s.strip()]
    if not recipes:
        raise ValueError("recipes: empty; give at least one recipe, e.g. 'default'")
    seen: set[tuple[str, str]] = set()
    for r in recipes:
        if (r.label, r.precision) in seen:
            raise ValueError(f"recipes: '{r.label}' is listed twice")
        seen.add((r.label, r.precision))
    return recipes
