"""Log a chat model as an MLflow transformers model with the OpenAI chat schema (``task="llm/v1/chat"``).

The model carries the shared input example (``input_example.json`` and ``serving_input_example.json``) for pre-deploy
checks (``mlflow.models.validate_serving_input``). MLflow's flavour would load the model a second time and run the
example while logging; that is switched off here (``model_config.no_log_time_validation``) and the tests run the
check on the logged model instead, so logging stays as fast as without an example.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow

from chatpack.flavours.model_config import (
    BATCH_SIZE_KEY,
    INPUT_EXAMPLE,
    GenerationDefaults,
    no_log_time_validation,
    source_metadata,
)
from chatpack.pins import TRANSFORMERS_MODEL_PACKAGES, installed_pins
from chatpack.sources.fetch import FetchedModel

logger = logging.getLogger(__name__)

TASK = "llm/v1/chat"
@contextlib.contextmanager
def _no_hub_lookups() -> Iterator[None]:
    """Make huggingface_hub refuse network calls for a while (the flavour's model-card and license look-ups)."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _pinned_hub_commit(commit: str) -> Iterator[None]:
    """Reference-only logging records the hub's *latest* commit; record the commit this run fetched instead."""
    from mlflow.transformers import flavor_config

    saved = flavor_config.get_latest_commit_for_repo
    flavor_config.get_latest_commit_for_repo = lambda repo: commit
    try:
        yield
    finally:
        flavor_config.get_latest_commit_for_repo = saved


def build_pipeline(hf_dir: Path, trust_remote_code: bool):
    """A text-generation pipeline over the local transformers folder (no network)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=trust_remote_code,
                                                           local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=trust_remote_code,
                                                              local_files_only=True)
    return transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)


def log_transformers_model(
    fetched: FetchedModel,
    model_name: str,
    defaults: GenerationDefaults,
    registered_model_name: str | None = None,
    save_pretrained: bool = True,
) -> mlflow.models.model.ModelInfo:
    """Log the fetched model as ``llm/v1/chat`` transformers model in the active run; return its ModelInfo.

    ``save_pretrained=False`` stores only a reference to the hub repository and commit (no weight copy); loading such
    a model downloads the weights from the hub, so it needs a hub source and network at load time.
    """
    info = fetched.info
    trust = bool(info["trust_remote_code"])
    if not save_pretrained and info["source_kind"] != "hub":
        raise ValueError(f"save_pretrained: false needs a hub model to refer to; fetch run {fetched.run_id} is a "
                         f"{info['source_kind']} source")
    start = time.perf_counter()
    pipe = build_pipeline(fetched.hf_dir, trust)
    # The flavour records model.name_or_path as the source model (and, without save_pretrained, as the hub repo to
    # load from): make it the source the user asked for, not the temporary folder the weights were read from.
    pipe.model.name_or_path = info["source"]
    guard = _no_hub_lookups() if save_pretrained else _pinned_hub_commit(info["revision_resolved"])
    logger.info("Logging %s as %s (save_pretrained=%s)", info["source"], model_name, save_pretrained)
    with guard, no_log_time_validation():
        model_info = _log(pipe, model_name, defaults, fetched, registered_model_name, save_pretrained)
    mlflow.log_metric("seconds_log_model", time.perf_counter() - start)
    return model_info


def _log(pipe, model_name: str, defaults: GenerationDefaults, fetched: FetchedModel,
         registered_model_name: str | None, save_pretrained: bool) -> mlflow.models.model.ModelInfo:
    return mlflow.transformers.log_model(
        transformers_model=pipe,
        name=model_name,
        task=TASK,
        input_example=INPUT_EXAMPLE,
        model_config={**defaults.transformers_config(), BATCH_SIZE_KEY: 1},
        pip_requirements=installed_pins(TRANSFORMERS_MODEL_PACKAGES),
        metadata=source_metadata(fetched),
        registered_model_name=registered_model_name or None,
        save_pretrained=save_pretrained,
    )
