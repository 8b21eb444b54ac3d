"""Log the onnxruntime-genai chat model as a models-from-code pyfunc (no pickled class) with pinned requirements."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

from chatpack.flavours.model_config import INPUT_EXAMPLE, GenerationDefaults, no_log_time_validation, source_metadata
from chatpack.flavours.onnx_chat.pyfunc_model import (
    CONCURRENCY_KEY,
    ENGINE_CONFIG,
    FEATURES,
    FEATURES_KEY,
    ONNX_ARTIFACT_KEY,
    THREADS_CONFIG_KEY,
)
from chatpack.pins import ONNX_MODEL_PACKAGES, installed_pins
from chatpack.protocol.reply_format import STRUCTURED_OUTPUTS_KEY
from chatpack.protocol.request_model import ChatBody, PromptBody
from chatpack.sources.fetch import FetchedModel

logger = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).resolve().parent / "model_code.py"
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding ``chatpack/``
# What a logged model runs, and nothing else: the request model and response shapes, the engine, the PythonModel.
RUNTIME_PACKAGES = ("chatpack/protocol", "chatpack/engine")
RUNTIME_FILES = ("chatpack/__init__.py", "chatpack/flavours/__init__.py", "chatpack/flavours/onnx_chat/__init__.py",
                 "chatpack/flavours/onnx_chat/pyfunc_model.py", "chatpack/flavours/onnx_chat/engine_client.py")

# Fields of MLflow's chat schema that the request models refuse by name. Declared anyway: MLflow drops undeclared
# fields silently, declared ones reach the model, which answers 400 naming them. (``frequency_penalty`` and
# ``presence_penalty`` are request-model fields: accepted at 0, refused by name otherwise.)
REFUSED_CHAT_COLUMNS = ("custom_inputs",)
# Fields of MLflow's chat schema declared from the request model instead: MLflow's ``tools`` type allows only flat
# parameter schemas and rejects other keys inside them, so nested parameters would never reach the model.
OWN_COLUMNS = ("tools",)
# Request-model fields left out of the signature (MLflow drops them before the model). stream_options: only streaming
# reads it, which ``mlflow models serve`` does not do, and an optional object column fails MLflow's enforcement of a
# multi-row request in which some row does not set it.
UNDECLARED_FIELDS = ("stream_options",)
_SCALARS = {str: DataType.string, int: DataType.long, float: DataType.double, bool: DataType.boolean}


def runtime_files() -> list[str]:
    """The model's code payload, as paths relative to :data:`PACKAGE_ROOT` (``.py`` files only)."""
    files = set(RUNTIME_FILES)
    for package in RUNTIME_PACKAGES:
        files.update(p.relative_to(PACKAGE_ROOT).as_posix() for p in (PACKAGE_ROOT / package).glob("*.py"))
    return sorted(files)


def stage_runtime(dest: Path) -> Path:
    """Copy the runtime payload into ``dest/chatpack`` (what the model's ``code/`` folder will hold); return it."""
    for relative in runtime_files():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / relative, target)
    return dest / "chatpack"


def chat_or_prompt_signature() -> ModelSignature:
    """The input schema, derived from the request models (:mod:`chatpack.protocol.request_model`) so that one model
    (and one ``mlflow models serve``) takes both the chat form and the raw-prompt form.

    Every field of ``ChatBody`` and ``PromptBody`` but :data:`UNDECLARED_FIELDS` is an optional column. Where MLflow's
    chat schema (``CHAT_MODEL_INPUT_SCHEMA``) has the field, its column is used as is: ``messages`` keeps MLflow's
    message type (a superset of ours: OpenAI's tool fields reach the model and are refused by name) and ``stop`` is an
    array of strings (a bare string is not expressible). :data:`REFUSED_CHAT_COLUMNS` are declared too. Column order:
    MLflow's chat schema (``prompt`` second), then our other fields in declaration order.
    """
    chat = {c.name: c for c in CHAT_MODEL_INPUT_SCHEMA.inputs}
    fields = {n: f for n, f in {**ChatBody.model_fields, **PromptBody.model_fields}.items()
              if n not in UNDECLARED_FIELDS}
    names = [n for n in chat if n in fields or n in REFUSED_CHAT_COLUMNS]
    names.insert(1, "prompt")
    names += [n for n in fields if n not in names]
    columns = [_optional(chat[n]) if n in chat and n not in OWN_COLUMNS
               else ColSpec(mlflow_type(fields[n].annotation), n, required=False) for n in names]
    return ModelSignature(inputs=Schema(columns), outputs=CHAT_MODEL_OUTPUT_SCHEMA)


def mlflow_type(annotation: Any) -> DataType | Array:
    """The MLflow schema type of a request-model field's annotation; ``X | None`` is ``X`` (every column is optional),
    ``Annotated[X, ...]`` is ``X``; a JSON object (``dict``) or a choice of types is ``Any``."""
    origin, args = get_origin(annotation), [a for a in get_args(annotation) if a is not type(None)]
    if origin in (Union, UnionType) and len(args) == 1 or origin is Annotated:
        return mlflow_type(args[0])
    if origin in (Union, UnionType, dict):
        return AnyType()
    if origin is list:
        return Array(mlflow_type(args[0]))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise TypeError(f"no MLflow schema type for {annotation!r}: declare it by hand or list it in UNDECLARED_FIELDS")


def _optional(column: ColSpec) -> ColSpec:
    return column if not column.required else ColSpec(column.type, column.name, required=False)


def log_onnx_model(
    fetched: FetchedModel,
    model_name: str,
    defaults: GenerationDefaults,
    registered_model_name: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the fetch run's ONNX folder as a chat pyfunc in the active run; return its ModelInfo."""
    info = fetched.info
    metadata = source_metadata(fetched) | {
        "precision": info["precision"],
        "execution_provider": info["execution_provider"],
        "onnxruntime_genai_version": info["versions"]["onnxruntime-genai"],
        # the ONNX form's provenance: the builder's options, or the published build it came from (no builder ran)
        **({"onnx_source": info["onnx_source"]["source"],
            "onnx_revision": info["onnx_source"]["revision_resolved"]} if info.get("onnx_source")
           else {"builder_options": str(info["builder_options"])}),
        # Safe to call from many threads at once: concurrent requests decode in one continuous batch.
        CONCURRENCY_KEY: "batched",
        STRUCTURED_OUTPUTS_KEY: "response_format,tools,tool_choice,parallel_tool_calls",
        FEATURES_KEY: ",".join(FEATURES),  # logprobs, text_completion objects for the raw-prompt form
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chatpack-runtime-") as staging:
        with no_log_time_validation():
            model_info = _log(fetched, model_name, defaults, registered_model_name, metadata,
                              stage_runtime(Path(staging)))
    mlflow.log_metric("seconds_log_model", time.perf_counter() - start)
    return model_info


def _log(fetched: FetchedModel, model_name: str, defaults: GenerationDefaults, registered_model_name: str | None,
         metadata: dict[str, str], runtime_dir: Path) -> mlflow.models.model.ModelInfo:
    return mlflow.pyfunc.log_model(
        name=model_name,
        python_model=str(MODEL_CODE),
        artifacts={ONNX_ARTIFACT_KEY: str(fetched.onnx_dir)},
        code_paths=[str(runtime_dir)],
        # ``threads`` (0 = onnxruntime's default) and the batch's shape are declared so that load-time overrides
        # reach the model: MLflow drops model_config keys the logged model does not declare (``serve`` sets them).
        model_config={"source_model": fetched.info["source"], **defaults.onnx_config(), THREADS_CONFIG_KEY: 0,
                      **ENGINE_CONFIG},
        signature=chat_or_prompt_signature(),
        input_example=INPUT_EXAMPLE,
        pip_requirements=installed_pins(ONNX_MODEL_PACKAGES),
        metadata=metadata,
        registered_model_name=registered_model_name or None,
    )
