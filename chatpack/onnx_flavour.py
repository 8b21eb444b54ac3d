"""Log the onnxruntime-genai chat model as a models-from-code pyfunc (no pickled class) with pinned requirements."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA
from mlflow.types.schema import ColSpec, DataType, Schema

from chatpack.fetch import FetchedModel
from chatpack.generation import GenerationDefaults
from chatpack.onnx_pyfunc import ONNX_ARTIFACT_KEY
from chatpack.pins import ONNX_MODEL_PACKAGES, installed_pins
from chatpack.transformers_flavour import source_metadata

logger = logging.getLogger(__name__)

CONCURRENCY_KEY = "chatpack_concurrency"
PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CODE = PACKAGE_DIR / "onnx_model_code.py"


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
    model_info = mlflow.pyfunc.log_model(
        name=model_name,
        python_model=str(MODEL_CODE),
        artifacts={ONNX_ARTIFACT_KEY: str(fetched.onnx_dir)},
        code_paths=[str(PACKAGE_DIR)],
        model_config={"source_model": info["source"], **defaults.onnx_config()},
        signature=chat_or_prompt_signature(),
        pip_requirements=installed_pins(ONNX_MODEL_PACKAGES),
        metadata=metadata,
        registered_model_name=registered_model_name or None,
    )
    mlflow.log_metric("seconds_log_model", time.perf_counter() - start)
    return model_info
