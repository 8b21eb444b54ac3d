"""The ``fetch_model`` step's logic: get a chat model, build its ONNX form, log both to MLflow.

Contract with later steps (they share nothing with this one but the tracking server and artifact store):
the run is tagged ``chatpack.step=fetch_model`` and holds the artifacts ``hf_model/`` (transformers folder),
``onnx_model/`` (onnxruntime-genai folder) and ``fetch_info.json``. Later steps call :func:`fetched_model` with the
run id to get local paths.

The ONNX form is built from the transformers folder by the model builder, or, with ``onnx_source``, taken from a
published onnxruntime-genai build (:mod:`chatpack.sources.onnx_source`): ``chatpack.onnx_form`` says which.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from chatpack.build import onnx_builder as onnx_build
from chatpack.build.recipes import Recipe, parse_recipe
from chatpack.sources import onnx_source as published_onnx
from chatpack.sources.cache import atomic_dir, cache_key, cache_root, dir_bytes, is_complete
from chatpack.sources.resolve import Materialized, cached_sha256, materialize, parse_source, weight_files
from chatpack.tracking import TAG_PREFIX, finished_run, local_artifact_dir

logger = logging.getLogger(__name__)

STEP = "fetch_model"
HF_ARTIFACT = "hf_model"
ONNX_ARTIFACT = "onnx_model"
INFO_ARTIFACT = "fetch_info.json"
DAMAGE_ARTIFACT = "damage_report.json"
VERSIONED_LIBRARIES = ("onnxruntime-genai", "onnxruntime", "transformers", "torch", "mlflow", "huggingface_hub")


@dataclass(frozen=True)
class FetchOptions:
    model: str = "microsoft/Phi-3-mini-4k-instruct"
    revision: str = "main"
    precision: str = "int4"
    execution_provider: str = "cpu"
    trust_remote_code: bool = False
    block_size: int = 0  # 0 = the builder's default
    accuracy_level: int = 0  # 0 = the builder's default
    recipe: str = "default"  # a recipe spec (chatpack.build.recipes)
    onnx_source: str = ""  # "" = build with the builder; else <hub id or folder>[:<subfolder>] of a published build
    onnx_revision: str = "main"  # hub onnx_source only

    def check(self) -> None:
        # First: with onnx_source the builder options must be left at their defaults (messages name both flags).
        published_onnx.check_onnx_source_flags(self.onnx_source, self.onnx_revision, self.precision, self.recipe,
                                               self.block_size, self.accuracy_level)
        onnx_build.check_build_options(self.precision, self.execution_provider, self.block_size, self.accuracy_level)
        self.resolved_recipe()
        source = parse_source(self.model, self.revision)
        if source.kind != "hub" and self.revision not in ("", "main"):
            raise ValueError(f"revision: only applies to hub models; '{self.model}' is a {source.kind} source")

    def resolved_recipe(self) -> Recipe:
        """The checked recipe, with the precision/block_size/accuracy_level parameters folded in."""
        return parse_recipe(self.recipe, self.precision, self.block_size, self.accuracy_level)

    def onnx_source_spec(self) -> published_onnx.OnnxSource | None:
        """The parsed ``onnx_source`` (None: build the ONNX form with the builder)."""
        return published_onnx.parse_onnx_source(self.onnx_source, self.onnx_revision)


@dataclass
class FetchResult:
    hf_dir: Path
    onnx_dir: Path
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedModel:
    """What a later step gets from a fetch run id: local folders plus the fetch run's recorded facts."""

    run_id: str
    hf_dir: Path
    onnx_dir: Path
    info: dict[str, Any]


def library_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERSIONED_LIBRARIES}


def fetch(options: FetchOptions) -> FetchResult:
    """Materialise the model and build (or reuse from the cache) its ONNX form, or take it from ``onnx_source``.
    No MLflow calls."""
    options.check()
    timings: dict[str, float] = {}
    spec = options.onnx_source_spec()
    published = None
    if spec is not None:  # download and check the published build first: it fails faster than the model download
        start = time.perf_counter()
        published = published_onnx.locate_and_check(spec)
        timings["seconds_onnx_source"] = time.perf_counter() - start
    start = time.perf_counter()
    material = materialize(parse_source(options.model, options.revision))
    timings["seconds_materialize"] = time.perf_counter() - start

    start = time.perf_counter()
    weights = {p.name: cached_sha256(p) for p in weight_files(material.hf_dir)}
    timings["seconds_hash"] = time.perf_counter() - start

    recipe = options.resolved_recipe()
    if published is not None:
        start = time.perf_counter()
        form = published_onnx.onnx_form(published, material.hf_dir, options.model, options.execution_provider)
        timings["seconds_onnx_source"] += time.perf_counter() - start
        info = _info(options, recipe, material, weights, {}, form.cache_hit, timings)
        onnx = form.info
        info.update(onnx_form="onnx_source", onnx_source=onnx, recipe=published_onnx.RECIPE_LABEL,
                    precision=onnx["quantisation"].get("precision", "unknown"),
                    execution_provider=onnx["execution_provider"])
        entry = form.onnx_dir
    else:
        extra = recipe.extra_options(options.trust_remote_code)
        key = {
            "source": [material.source.kind, material.source.name],
            "revision": material.resolved_revision,
            "weights": weights,
            "precision": recipe.precision,
            "execution_provider": options.execution_provider,
            "builder": onnx_build.builder_version(),
            "extra_options": extra,
        }
        entry = cache_root() / "onnx" / cache_key(key)
        start = time.perf_counter()
        cache_hit = is_complete(entry)
        if cache_hit:
            logger.info("ONNX cache hit: %s", entry)
        else:
            onnx_build.check_builder_memory(material.hf_dir, recipe.precision)
            with atomic_dir(entry) as tmp:
                onnx_build.build_onnx(material.hf_dir, tmp, recipe.precision, options.execution_provider,
                                      cache_root() / "builder", extra)
        timings["seconds_build"] = time.perf_counter() - start
        info = _info(options, recipe, material, weights, extra, cache_hit, timings)
        info["onnx_form"] = "builder"
    info["hf_model_bytes"] = dir_bytes(material.hf_dir)
    info["onnx_model_bytes"] = dir_bytes(entry)
    return FetchResult(material.hf_dir, entry, info)


def log_fetch(result: FetchResult) -> None:
    """Log tags, metrics and the two model folders to the active run."""
    info = result.info
    tags = {
        TAG_PREFIX + "source_kind": info["source_kind"],
        TAG_PREFIX + "source": info["source"],
        TAG_PREFIX + "revision.requested": info["revision_requested"],
        TAG_PREFIX + "revision.resolved": info["revision_resolved"],
        TAG_PREFIX + "precision": info["precision"],
        TAG_PREFIX + "recipe": info["recipe"],
        TAG_PREFIX + "execution_provider": info["execution_provider"],
        TAG_PREFIX + "trust_remote_code": str(info["trust_remote_code"]).lower(),
        TAG_PREFIX + "onnx_form": info.get("onnx_form", "builder"),
    }
    if info.get("onnx_source"):  # no builder ran: the ONNX form's provenance is the published build
        tags.update(_onnx_source_tags(info["onnx_source"]))
    else:
        tags[TAG_PREFIX + "builder_version"] = info["versions"]["onnxruntime-genai"]
        tags[TAG_PREFIX + "builder_options"] = json.dumps(info["builder_options"], sort_keys=True)
    if info["source_kind"] == "fixture":
        tags[TAG_PREFIX + "test_fixture"] = "true: random weights, for tests only"
    tags.update({f"{TAG_PREFIX}sha256.{name}": digest for name, digest in info["weights_sha256"].items()})
    tags.update({f"{TAG_PREFIX}version.{name}": v for name, v in info["versions"].items()})
    mlflow.set_tags(tags)
    start = time.perf_counter()
    mlflow.log_artifacts(str(result.hf_dir), HF_ARTIFACT)
    mlflow.log_artifacts(str(result.onnx_dir), ONNX_ARTIFACT)
    info["seconds"]["seconds_log_artifacts"] = time.perf_counter() - start
    mlflow.log_dict(info, INFO_ARTIFACT)
    metrics = {k: float(v) for k, v in info["seconds"].items()}
    metrics.update(hf_model_bytes=info["hf_model_bytes"], onnx_model_bytes=info["onnx_model_bytes"],
                   onnx_cache_hit=float(info["onnx_cache_hit"]))
    if info.get("damage"):  # the damage report (chatpack.evaluation.damage), when the step made one
        metrics.update(info["damage"]["metrics"])
        mlflow.log_dict(info["damage"], DAMAGE_ARTIFACT)
    mlflow.log_metrics(metrics)


def _onnx_source_tags(onnx: dict[str, Any]) -> dict[str, str]:
    tags = {
        TAG_PREFIX + "onnx_source": onnx["source"],
        TAG_PREFIX + "onnx_source_kind": onnx["kind"],
        TAG_PREFIX + "onnx_revision.requested": onnx["revision_requested"],
        TAG_PREFIX + "onnx_revision.resolved": onnx["revision_resolved"],
        TAG_PREFIX + "onnx_chat_template": onnx["chat_template"]["from"],
        TAG_PREFIX + "onnx_quantisation": json.dumps(onnx["quantisation"], sort_keys=True),
    }
    tags.update({f"{TAG_PREFIX}onnx_sha256.{name}": digest for name, digest in onnx["weights_sha256"].items()})
    return tags


def fetched_model(fetch_run_id: str, param: str = "fetch_run_id") -> FetchedModel:
    """Local folders for a finished fetch run: used in place when the artifact store is local, else downloaded once
    (atomically) into the cache."""
    run = finished_run(fetch_run_id, param, STEP)
    local = local_artifact_dir(run.info.artifact_uri)
    if local and (Path(local) / ONNX_ARTIFACT).is_dir() and (Path(local) / HF_ARTIFACT).is_dir():
        root = Path(local)
    else:
        root = cache_root() / "runs" / fetch_run_id
        if not is_complete(root):
            logger.info("Downloading the artifacts of fetch run %s", fetch_run_id)
            with atomic_dir(root) as tmp:
                for name in (HF_ARTIFACT, ONNX_ARTIFACT, INFO_ARTIFACT):
                    mlflow.artifacts.download_artifacts(run_id=fetch_run_id, artifact_path=name, dst_path=str(tmp))
    info = json.loads((root / INFO_ARTIFACT).read_text())
    return FetchedModel(fetch_run_id, root / HF_ARTIFACT, root / ONNX_ARTIFACT, info)


def _info(options: FetchOptions, recipe: Recipe, material: Materialized, weights: dict[str, str],
          extra: dict[str, str], cache_hit: bool, timings: dict[str, float]) -> dict[str, Any]:
    source = material.source
    return {
        "options": asdict(options),
        "source_kind": source.kind,
        "source": options.model if source.kind != "local" else source.name,
        "revision_requested": source.revision,
        "revision_resolved": material.resolved_revision,
        "precision": recipe.precision,
        "recipe": recipe.label,
        "execution_provider": options.execution_provider,
        "trust_remote_code": options.trust_remote_code,
        "builder_options": extra,
        "weights_sha256": weights,
        "versions": library_versions(),
        "onnx_cache_hit": cache_hit,
        "seconds": timings,
    }
