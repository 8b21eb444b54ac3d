"""What an onnxruntime-genai model folder holds, read without loading its weights: its ``genai_config.json``, the
model files it names (and their external data), the decoder's quantisation, the execution provider it is set up for,
and the chat template its tokenizer reads (:func:`model_chat_template`: that of a transformers folder)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from chatpack.sources.resolve import SourceError

GENAI_CONFIG = "genai_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def check_genai_folder(folder: Path, where: str, param: str) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Check an onnxruntime-genai folder before use; return its genai_config, the model files (each .onnx the config
    names, then its external data files) and the decoder's quantisation. ``where`` names the folder in errors, which
    start with ``param`` (the flag that named the folder)."""
    config_path = folder / GENAI_CONFIG
    if not config_path.is_file():
        raise SourceError(f"{param}: {where} has no {GENAI_CONFIG} (not an onnxruntime-genai model folder)")
    try:
        config = json.loads(config_path.read_text())
        decoder_file = config["model"]["decoder"]["filename"]
    except json.JSONDecodeError as exc:
        raise SourceError(f"{param}: {where}: {GENAI_CONFIG} is not valid JSON ({exc})") from None
    except (KeyError, TypeError):
        raise SourceError(f"{param}: {where}: {GENAI_CONFIG} names no decoder model (model.decoder.filename)") from None
    named = {"decoder": decoder_file}
    named.update({section: part["filename"] for section, part in config["model"].items()
                  if section != "decoder" and isinstance(part, dict) and isinstance(part.get("filename"), str)})
    files: list[str] = []
    quantisation: dict[str, Any] = {}
    for section, filename in named.items():
        path = folder / filename
        if not path.is_file():
            raise SourceError(f"{param}: {where} has no {filename} (the {section} model {GENAI_CONFIG} names)")
        data_files, facts = _inspect_onnx(path, where, param)
        for data in data_files:
            if not (path.parent / data).is_file():
                raise SourceError(f"{param}: {where} has no {data} (the external data file {filename} references)")
        files += [filename, *((PurePosixPath(filename).parent / d).as_posix() for d in data_files)]
        if section == "decoder":
            quantisation = facts
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise SourceError(f"{param}: {where} has no tokenizer (tokenizer.json or tokenizer.model)")
    if not (folder / "tokenizer_config.json").is_file():
        raise SourceError(f"{param}: {where} has no tokenizer_config.json")
    return config, list(dict.fromkeys(files)), quantisation


def _inspect_onnx(path: Path, where: str, param: str) -> tuple[list[str], dict[str, Any]]:
    """The external data files an .onnx file references, and its precision (from its MatMulNBits nodes, else the
    type of its float weights); read without loading the weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf/onnx raise assorted types for a damaged file
        raise SourceError(f"{param}: {where}: {path.name} is not a readable ONNX model "
                          f"({type(exc).__name__})") from None
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    locations: list[str] = []
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location and location not in locations:
                locations.append(location)
    return locations, _quantisation(model, tensors)


def _quantisation(model: Any, tensors: list[Any]) -> dict[str, Any]:
    import onnx

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            bits = int(attrs.get("bits", 4))
            return {"precision": f"int{bits}", "bits": bits, "block_size": attrs.get("block_size"),
                    "accuracy_level": attrs.get("accuracy_level", 0)}
    types = {t.data_type for t in tensors}
    for dtype, name in ((onnx.TensorProto.FLOAT16, "fp16"), (onnx.TensorProto.BFLOAT16, "bf16"),
                        (onnx.TensorProto.FLOAT, "fp32")):
        if dtype in types:
            return {"precision": name}
    return {"precision": "unknown"}


def execution_provider_of(config: dict[str, Any]) -> str:
    """The execution provider a genai_config.json is set up for (no provider options: cpu)."""
    options = config["model"]["decoder"].get("session_options", {}).get("provider_options") or []
    for entry in options:
        if isinstance(entry, dict) and entry:
            return str(next(iter(entry)))
    return "cpu"


def genai_chat_template(folder: Path) -> str | None:
    """The chat template onnxruntime-genai's tokenizer reads from ``folder`` (``chat_template.jinja``, else a string
    ``chat_template`` in ``tokenizer_config.json``); None when it has none (apply_chat_template then raises)."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text()
    try:
        found = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, json.JSONDecodeError):
        return None
    return found if isinstance(found, str) and found.strip() else None


def model_chat_template(hf_dir: Path) -> str | None:
    """The chat template of a transformers folder: ``chat_template.jinja``, ``chat_template.json``, or
    ``tokenizer_config.json``'s ``chat_template`` (a string, or the ``default`` of a list of named templates)."""
    found = genai_chat_template(hf_dir)
    if found:
        return found
    if (hf_dir / "chat_template.json").is_file():
        found = json.loads((hf_dir / "chat_template.json").read_text()).get("chat_template")
        if isinstance(found, str) and found.strip():
            return found
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    named = config.get("chat_template")
    if isinstance(named, list):
        by_name = {t.get("name"): t.get("template") for t in named if isinstance(t, dict)}
        return by_name.get("default") or next(iter(by_name.values()), None)
    return None
