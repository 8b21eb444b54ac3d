"""Log the onnxruntime-genai chat model as a models-from-code pyfunc (no pickled class) with pinned requirements."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA
from mlflow.types.schema import ColSpec, DataType, Schema

from chatpack.flavours.model_config import GenerationDefaults, source_metadata
from chatpack.flavours.onnx_chat.pyfunc_model import ONNX_ARTIFACT_KEY
from chatpack.pins import ONNX_MODEL_PACKAGES, installed_pins
from chatpack.sources.fetch import FetchedModel

logger = logging.getLogger(__name__)

CONCURRENCY_KEY = "chatpack_concurrency"
MODEL_CODE = Path(__file__).resolve().parent / "model_code.py"
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding ``chatpack/``
# What a logged model runs, and nothing else: the request model and response shapes, the engine, the PythonModel.
RUNTIME_PACKAGES = ("chatpack/protocol", "chatpack/engine")
RUNTIME_FILES = ("chatpack/__init__.py", "chatpack/flavours/__init__.py", "chatpack/flavours/onnx_chat/__init__.py",
                 "chatpack/flavours/onnx_chat/pyfunc_model.py")


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
    """MLflow's chat-completions input schema with ``messages`` made optional and a ``prompt`` string added, so one
    model (and one ``mlflow models serve``) takes both the chat form and the raw-prompt form."""
    columns = [ColSpec(c.type, c.name, required=False) if c.name == "messages" else c
               for c in CHAT_MODEL_INPUT_SCHEMA.inputs]
    columns.insert(1, ColSpec(DataType.string, "prompt", required=False))
    columns.append(ColSpec(DataType.long, "seed", required=False))
    return ModelSignature(inputs=Schema(columns), outputs=CHAT_MODEL_OUTPUT_SCHEMA)


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
        "builder_options": str(info["builder_options"]),
        # Safe to call from many threads at once: greedy requests that meet are answered in one batch.
        CONCURRENCY_KEY: "batched",
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chatpack-runtime-") as staging:
        model_info = _log(fetched, model_name, defaults, registered_model_name, metadata, stage_runtime(Path(staging)))
    mlflow.log_metric("seconds_log_model", time.perf_counter() - start)
    return model_info


def _log(fetched: FetchedModel, model_name: str, defaults: GenerationDefaults, registered_model_name: str | None,
         metadata: dict[str, str], runtime_dir: Path) -> mlflow.models.model.ModelInfo:
    return mlflow.pyfunc.log_model(
        name=model_name,
        python_model=str(MODEL_CODE),
        artifacts={ONNX_ARTIFACT_KEY: str(fetched.onnx_dir)},
        code_paths=[str(runtime_dir)],
        model_config={"source_model": fetched.info["source"], **defaults.onnx_config()},
        signature=chat_or_prompt_signature(),
        pip_requirements=installed_pins(ONNX_MODEL_PACKAGES),
        metadata=metadata,
        registered_model_name=registered_model_name or None,
    )
