"""A published onnxruntime-genai build used as the ONNX form (``onnx_source``), instead of running the model builder.

``onnx_source`` is ``<source>[:<subfolder>]``; the source is a hub id (``owner/name``) or a local folder:

- the whole value is an existing folder: that folder, no subfolder (a folder name may hold ``:``);
- else it is split at its LAST ``:`` when the left part is an existing folder or a hub id and the right part is not
  empty: ``microsoft/Phi-3-mini-4k-instruct-onnx:cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4``,
  ``/data/Phi-3-mini-4k-instruct-onnx:cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4``;
- else the whole value is a hub id (the build at the repository's root) or an error naming ``onnx_source``.

A hub id downloads only the subfolder (``snapshot_download(repo_id, revision=onnx_revision,
allow_patterns=["<subfolder>/*"])``) through the same code path as the ``model`` download (offline: one line, at once).
The folder is checked before use (:func:`check_genai_folder`), compared with the transformers model it stands in for
(vocabulary size), given that model's chat template when it has none onnxruntime-genai can read, and copied into the
content-keyed cache (``<cache>/onnx/<key>``, atomically) with a provenance file :data:`PROVENANCE_FILE`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from chatpack.build.onnx_builder import EXECUTION_PROVIDERS
from chatpack.sources.cache import atomic_dir, cache_key, cache_root, is_complete, write_json_atomic
from chatpack.sources.genai_folder import (
    CHAT_TEMPLATE_FILE,
    check_genai_folder,
    execution_provider_of,
    genai_chat_template,
    model_chat_template,
)
from chatpack.sources.resolve import SourceError, cached_sha256, download_from_hub, folder_fingerprint, is_hub_id

logger = logging.getLogger(__name__)

PARAM = "onnx_source"
REVISION_PARAM = "onnx_revision"
PROVENANCE_FILE = "onnx_source.json"  # written into the ONNX folder, where a built one holds builder.log
ONNX_SOURCE_VERSION = 1  # bump when the copy below changes: it is part of the cache key
RECIPE_LABEL = "onnx_source"  # the chatpack.recipe tag of a fetch run whose ONNX form came from onnx_source


@dataclass(frozen=True)
class OnnxSource:
    kind: str  # "hub" | "local"
    name: str  # hub id, or the absolute local folder
    subfolder: str  # "" = the repository's (folder's) root
    revision: str  # requested revision (hub only; "" for a local folder)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.subfolder}" if self.subfolder else self.name


@dataclass(frozen=True)
class GenaiFolder:
    """A checked onnxruntime-genai folder: where it is, what revision it resolved to, and the facts read from it."""

    source: OnnxSource
    folder: Path
    resolved_revision: str
    config: dict[str, Any]
    model_files: list[str]  # the .onnx files genai_config.json names and their external data files (relative)
    quantisation: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{PARAM} '{self.source.label}'"


@dataclass
class OnnxForm:
    """The ONNX form taken from ``onnx_source``: its cache entry and what fetch_info.json records about it."""

    onnx_dir: Path
    cache_hit: bool
    info: dict[str, Any]


def parse_onnx_source(value: str, revision: str = "main") -> OnnxSource | None:
    """Classify the ``onnx_source`` parameter (None when empty: build with the builder). See the module docstring."""
    value = value.strip()
    if not value:
        return None
    whole = Path(value).expanduser()
    if whole.is_dir():
        return OnnxSource("local", str(whole.resolve()), "", "")
    left, sep, right = value.rpartition(":")
    if sep and left and right:
        root = Path(left).expanduser()
        if root.is_dir():
            subfolder = _subfolder(right, value)
            if not (root / subfolder).is_dir():
                raise SourceError(f"{PARAM}: local folder '{left}' has no subfolder '{subfolder}'")
            return OnnxSource("local", str(root.resolve()), subfolder, "")
        if is_hub_id(left) and not _path_like(left):
            return OnnxSource("hub", left, _subfolder(right, value), revision or "main")
    if _path_like(value) or whole.exists():
        also = f" (nor is '{left}' a folder with subfolder '{right}')" if sep and left and right else ""
        raise SourceError(f"{PARAM}: local folder '{value}' does not exist or is not a directory{also}")
    if is_hub_id(value):
        return OnnxSource("hub", value, "", revision or "main")
    raise SourceError(f"{PARAM}: '{value}' is neither an existing folder nor a hub id, each optionally followed by "
                      ":<subfolder> (e.g. microsoft/Phi-3-mini-4k-instruct-onnx:cpu_and_mobile/"
                      "cpu-int4-rtn-block-32-acc-level-4)")


def _path_like(text: str) -> bool:
    return text.startswith((".", "/", "~"))


def _subfolder(text: str, value: str) -> str:
    sub = text.strip().strip("/")
    parts = PurePosixPath(sub).parts
    if not sub or text.strip().startswith("/") or ".." in parts or "\\" in sub:
        raise SourceError(f"{PARAM}: subfolder '{text}' in '{value}' must be a relative path inside the source "
                          "(no leading '/', no '..')")
    return "/".join(parts)


def check_onnx_source_flags(onnx_source: str, onnx_revision: str, precision: str, recipe: str, block_size: int,
                            accuracy_level: int, recipe_flag: str = "recipe", default_recipe: str = "default") -> None:
    """Refuse builder options with ``onnx_source`` (no builder runs: they would silently do nothing), and
    ``onnx_revision`` without a hub ``onnx_source``; each message names both flags."""
    source = parse_onnx_source(onnx_source, onnx_revision)
    if source is None:
        if onnx_revision not in ("", "main"):
            raise ValueError(f"onnx_revision/onnx_source: onnx_revision '{onnx_revision}' only applies with a hub "
                             "onnx_source; onnx_source is empty (the ONNX form is built by the builder)")
        return
    if source.kind != "hub" and onnx_revision not in ("", "main"):
        raise ValueError(f"onnx_revision/onnx_source: onnx_revision only applies to a hub onnx_source; "
                         f"'{onnx_source}' is a local folder")
    why = "with onnx_source the ONNX form is the published build as it is and no builder runs"
    if precision != "int4":
        raise ValueError(f"precision/onnx_source: precision={precision} is a builder option; {why} (its precision "
                         "is read from the build and recorded): leave precision at its default or onnx_source empty")
    if recipe.strip() not in ("", default_recipe):
        raise ValueError(f"{recipe_flag}/onnx_source: {recipe_flag}={recipe} is a builder option; {why}: leave "
                         f"{recipe_flag} at its default ({default_recipe}) or onnx_source empty")
    for flag, number in (("block_size", block_size), ("accuracy_level", accuracy_level)):
        if number:
            raise ValueError(f"{flag}/onnx_source: {flag}={number} is a builder option; {why}: leave {flag} at 0 or "
                             "onnx_source empty")


def locate(source: OnnxSource) -> tuple[Path, str]:
    """The local folder of ``source`` (downloading a hub subfolder) and the revision it resolved to."""
    if source.kind == "local":
        folder = Path(source.name) / source.subfolder if source.subfolder else Path(source.name)
        if not folder.is_dir():
            raise SourceError(f"{PARAM}: local folder '{folder}' does not exist or is not a directory")
        return folder, folder_fingerprint(folder)
    where = f"'{source.name}'" + (f" (subfolder '{source.subfolder}')" if source.subfolder else "")
    offline_hint = (
        f"{PARAM}: cannot download {where} at {REVISION_PARAM} '{source.revision}' from the Hugging Face hub "
        "(offline or unreachable, and not in the local hub cache); pass a local copy with "
        f"-P {PARAM}=/path/to/folder[:<subfolder>], or leave {PARAM} empty to build the ONNX form with the builder"
    )
    if source.subfolder:
        patterns, ignore = [f"{source.subfolder}/*"], None
    else:  # the repository's root files only: published repositories hold several builds in subfolders
        patterns, ignore = ["*"], ["*/*"]
    snapshot, resolved = download_from_hub(source.name, source.revision, patterns, offline_hint, param=PARAM,
                                           revision_param=REVISION_PARAM, ignore_patterns=ignore)
    folder = snapshot / source.subfolder if source.subfolder else snapshot
    if not folder.is_dir():
        raise SourceError(f"{PARAM}: hub repository '{source.name}' at {resolved} has no subfolder "
                          f"'{source.subfolder}'")
    return folder, resolved


def locate_and_check(source: OnnxSource) -> GenaiFolder:
    """Download (hub) or find (local) the folder and check it: see :func:`check_genai_folder`."""
    folder, resolved = locate(source)
    config, files, quantisation = check_genai_folder(folder, f"{PARAM} '{source.label}'", PARAM)
    return GenaiFolder(source, folder, resolved, config, files, quantisation)


def onnx_form(published: GenaiFolder, hf_dir: Path, model: str, execution_provider: str) -> OnnxForm:
    """The cache entry holding ``published`` (copied once), checked against the transformers model in ``hf_dir``
    (``model`` names it in errors) and the ``execution_provider`` flag."""
    source, folder, config = published.source, published.folder, published.config
    provider = execution_provider_of(config)
    if provider not in EXECUTION_PROVIDERS:
        raise SourceError(f"{PARAM}: {published.where} is a build for the '{provider}' execution provider; this "
                          f"project runs {', '.join(EXECUTION_PROVIDERS)} builds")
    if provider != execution_provider:
        raise SourceError(f"execution_provider/onnx_source: {published.where} is a build for {provider}, but "
                          f"execution_provider={execution_provider}: pass -P execution_provider={provider} or pick the "
                          f"{execution_provider} build")
    _check_same_model(published, hf_dir, model)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    hashes = {name: cached_sha256(folder / name) for name in files}
    template = genai_chat_template(folder)
    reference = model_chat_template(hf_dir)
    added = None
    if template is None:
        if not reference:
            raise SourceError(f"{PARAM}: {published.where} has no chat template ({CHAT_TEMPLATE_FILE} or "
                              f"'chat_template' in tokenizer_config.json), nor has model '{model}'")
        added = reference
        logger.info("%s has no chat template onnxruntime-genai reads: writing model %s's into %s of the copy",
                    published.where, model, CHAT_TEMPLATE_FILE)
    chat_template = {
        "from": "model" if added is not None else PARAM,
        "file": CHAT_TEMPLATE_FILE if added is not None or (folder / CHAT_TEMPLATE_FILE).is_file()
        else "tokenizer_config.json",
        "same_as_model": (added or template) == reference,
    }
    if added is not None:
        chat_template["note"] = (f"{published.where} has no chat template (published 2024 builds keep it in "
                                 f"tokenizer_config.json or not at all): {CHAT_TEMPLATE_FILE} was written into the "
                                 f"copy from model '{model}'")
    elif not chat_template["same_as_model"]:
        logger.warning("%s's chat template differs from model %s's: the ONNX model renders prompts with its own",
                       published.where, model)
    info = {
        "kind": source.kind,
        "source": source.label,
        "name": source.name,
        "subfolder": source.subfolder,
        "revision_requested": source.revision,
        "revision_resolved": published.resolved_revision,
        "decoder": config["model"]["decoder"]["filename"],
        "model_files": published.model_files,
        "weights_sha256": {name: hashes[name] for name in published.model_files},
        "files_sha256": hashes,
        "quantisation": published.quantisation,
        "execution_provider": provider,
        "model_type": config["model"].get("type"),
        "chat_template": chat_template,
    }
    key = {"onnx_source": [source.kind, source.name, source.subfolder], "revision": published.resolved_revision,
           "files": hashes, "chat_template_added": added, "version": ONNX_SOURCE_VERSION}
    entry = cache_root() / "onnx" / cache_key(key)
    hit = is_complete(entry)
    if hit:
        logger.info("ONNX cache hit (onnx_source): %s", entry)
    else:
        with atomic_dir(entry) as tmp:
            for name in files:
                _link_or_copy(folder / name, tmp / name, link=source.kind == "hub")
            if added is not None:
                (tmp / CHAT_TEMPLATE_FILE).write_text(added)
            write_json_atomic(tmp / PROVENANCE_FILE, info)
    return OnnxForm(entry, hit, info)


def _check_same_model(published: GenaiFolder, hf_dir: Path, model: str) -> None:
    """The published build must be a build of ``model`` (the transformers flavour and the damage report's
    reference): the same vocabulary size; a different architecture name is only logged."""
    genai = published.config["model"]
    try:
        hf = json.loads((hf_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return
    vocab, hf_vocab = genai.get("vocab_size"), hf.get("vocab_size")
    if vocab and hf_vocab and int(vocab) != int(hf_vocab):
        raise SourceError(f"onnx_source/model: {published.where} has vocab_size {vocab}, model '{model}' has "
                          f"{hf_vocab}: the published build is not a build of that model")
    if genai.get("type") and hf.get("model_type") and genai["type"] != hf["model_type"]:
        logger.warning("%s is a '%s' build, model %s is '%s'", published.where, genai["type"], model,
                       hf["model_type"])


def _link_or_copy(src: Path, dest: Path, link: bool) -> None:
    """Copy ``src`` to ``dest``; a hub file (an immutable blob of the hub cache) is hard-linked when it can be."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src.resolve(), dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)
