"""What both flavours record when logged: generation defaults (``model_config``; a request's own options override
them), where the weights came from (model metadata), and the input example both carry for pre-deploy checks
(``mlflow.models.validate_serving_input``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chatpack.sources.fetch import FetchedModel

# Declared (1) in the transformers model's model_config so that a load-time override reaches its pipeline:
# ``mlflow.pyfunc.load_model(uri, model_config={"batch_size": 8})`` answers a DataFrame of rows in batches of 8.
BATCH_SIZE_KEY = "batch_size"
INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}


@dataclass(frozen=True)
class GenerationDefaults:
    """``None`` means not set: the model's own default applies and nothing is logged for it."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    do_sample: bool | None = None

    def check(self) -> None:
        """Refuse impossible values, naming the flag."""
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: must be a positive integer, got {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.do_sample is False and self.temperature:
            raise ValueError("do_sample/temperature: temperature has no effect with do_sample=false; drop one of them")

    def set_options(self) -> dict[str, Any]:
        """The options that were set, as given."""
        self.check()
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def transformers_config(self) -> dict[str, Any]:
        """``model_config`` for the transformers flavour: the options set, plus an explicit ``do_sample``.

        transformers' text-generation pipeline samples by default (``do_sample=True, temperature=0.7``), unlike the
        model's own generation config; so unless sampling is asked for (``do_sample=true`` or ``temperature > 0``) the
        logged model decodes greedily and gives the same reply for the same request.
        """
        config = self.set_options()
        if self.do_sample is None:
            config["do_sample"] = bool(self.temperature)
        if not config["do_sample"]:
            config.pop("temperature", None)
        return config

    def onnx_config(self) -> dict[str, Any]:
        """``model_config`` for the onnxruntime-genai pyfunc, where sampling follows temperature (0/unset = greedy)."""
        if self.do_sample is not None:
            raise ValueError("do_sample: the onnx flavour samples when temperature > 0; set temperature instead")
        return self.set_options()


def source_metadata(fetched: FetchedModel) -> dict[str, str]:
    """What a logged model records about where its weights came from."""
    info = fetched.info
    meta = {
        "chatpack_fetch_run_id": fetched.run_id,
        "source_kind": info["source_kind"],
        "source_model": info["source"],
        "source_revision": info["revision_resolved"],
        "weights_sha256": ",".join(f"{k}={v}" for k, v in sorted(info["weights_sha256"].items())),
    }
    if info["source_kind"] == "fixture":
        meta["test_fixture"] = "true: random weights, replies are noise"
    return meta


@contextlib.contextmanager
def no_log_time_validation() -> Iterator[None]:
    """Skip MLflow's load-and-predict of the input example inside ``log_model`` (measured on the bundled 135M model:
    7.2 s to log instead of 0.8 s; a large model would sit in memory twice): the check it calls is stubbed for the
    duration of the call, and the tests run it on the logged model instead."""
    from mlflow.models import utils as model_utils

    saved = model_utils._validate_serving_input
    model_utils._validate_serving_input = lambda model_uri, serving_input: None
    try:
        yield
    finally:
        model_utils._validate_serving_input = saved
