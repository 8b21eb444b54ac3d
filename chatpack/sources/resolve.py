"""Where a chat model comes from: a Hugging Face hub id, a local folder, the bundled model, or the test fixture.

``parse_source`` reads the ``model`` parameter; ``materialize`` turns a source into a local transformers folder and
the revision it resolved to. Every error is one line that names the parameter or file at fault.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from chatpack.sources import bundled, fixture
from chatpack.sources.cache import atomic_dir, cache_key, cache_root, is_complete, write_json_atomic

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
FIXTURE_PREFIX = "fixture:"
# The files a chat model needs; weights are matched separately. Hub downloads fetch only these.
HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.py",  # custom modelling code, used only with trust_remote_code
]
WEIGHT_GLOBS = ("*.safetensors", "*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class SourceError(ValueError):
    """A model source that cannot be used, with a message naming what to fix."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "hub" | "local" | "bundled" | "fixture"
    name: str  # hub id, absolute folder, bundled name or fixture name
    revision: str  # requested revision (hub only; "" otherwise)


@dataclass(frozen=True)
class Materialized:
    source: ModelSource
    hf_dir: Path
    resolved_revision: str


def parse_source(model: str, revision: str = "main") -> ModelSource:
    """Classify the ``model`` parameter."""
    model = model.strip()
    if not model:
        raise SourceError("model: empty; give a hub id, a local folder, 'bundled:smollm2-135m-instruct' or "
                          "'fixture:tiny-random-phi3'")
    if model.startswith(BUNDLED_PREFIX):
        name = model[len(BUNDLED_PREFIX):]
        if name not in bundled.BUNDLED_MODELS:
            raise SourceError(f"model: unknown bundled model '{model}'; known: "
                              + ", ".join(BUNDLED_PREFIX + k for k in bundled.BUNDLED_MODELS))
        return ModelSource("bundled", name, "")
    if model.startswith(FIXTURE_PREFIX):
        name = model[len(FIXTURE_PREFIX):]
        if name not in fixture.FIXTURES:
            raise SourceError(f"model: unknown test fixture '{model}'; known: "
                              + ", ".join(FIXTURE_PREFIX + k for k in fixture.FIXTURES))
        return ModelSource("fixture", name, "")
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            raise SourceError(f"model: local folder '{model}' does not exist or is not a directory")
        return ModelSource("local", str(path.resolve()), "")
    if _HUB_ID.match(model):
        return ModelSource("hub", model, revision or "main")
    raise SourceError(f"model: '{model}' is neither an existing folder nor a hub id of the form 'owner/name'")


def validate_hf_folder(folder: Path) -> None:
    """Check that ``folder`` holds a usable chat model; name the first missing piece."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SourceError(f"model: {folder} has no config.json (not a Hugging Face model folder)")
    if not weight_files(folder):
        raise SourceError(f"model: {folder} has no weights (*.safetensors or *.bin)")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise SourceError(f"model: {folder} has no tokenizer (tokenizer.json or tokenizer.model)")
    if not (folder / "tokenizer_config.json").is_file():
        raise SourceError(f"model: {folder} has no tokenizer_config.json")
    if not has_chat_template(folder):
        raise SourceError(f"model: {folder} has no chat template (chat_template.jinja, or 'chat_template' in "
                          "tokenizer_config.json); a chat model needs one")


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return bool(config.get("chat_template"))


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for g in WEIGHT_GLOBS for p in Path(folder).glob(g))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of a (weight) file, remembered by (path, size, mtime) so multi-GB files are hashed once."""
    st = path.stat()
    memo = cache_root() / "sha256" / (cache_key({"p": str(path.resolve()), "s": st.st_size, "m": st.st_mtime_ns})
                                       + ".json")
    if memo.is_file():
        return json.loads(memo.read_text())["sha256"]
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(memo, {"path": str(path), "sha256": digest})
    return digest


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a hub repository id (``owner/name``)."""
    return bool(_HUB_ID.match(text))


def folder_fingerprint(folder: Path) -> str:
    """A revision for a local folder: the sha256 over its files' names, sizes and modification times."""
    digest = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            st = p.stat()
            digest.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return "local-" + digest.hexdigest()[:16]


def materialize(source: ModelSource) -> Materialized:
    """Return a local transformers folder for ``source`` (downloading or building it if needed)."""
    if source.kind == "hub":
        hf_dir, resolved = _download_from_hub(source.name, source.revision)
    elif source.kind == "local":
        hf_dir, resolved = Path(source.name), folder_fingerprint(Path(source.name))
    elif source.kind == "bundled":
        gguf, version = bundled.bundled_gguf(source.name)
        resolved = f"{bundled.BUNDLED_MODELS[source.name][0]}=={version}"
        hf_dir = _built_folder(("bundled", source.name, resolved), lambda out: bundled.convert_gguf(gguf, out))
    elif source.kind == "fixture":
        version, build = fixture.FIXTURES[source.name]
        resolved = f"fixture-v{version}-seed{fixture.SEED}"
        hf_dir = _built_folder(("fixture", source.name, resolved), build)
    else:  # pragma: no cover - parse_source makes only the kinds above
        raise SourceError(f"model: unsupported source kind {source.kind}")
    validate_hf_folder(hf_dir)
    return Materialized(source, hf_dir, resolved)


def _built_folder(key: tuple[str, ...], build) -> Path:
    import transformers

    final = cache_root() / "hf" / cache_key({"key": key, "transformers": transformers.__version__})
    if is_complete(final):
        logger.info("Using cached transformers folder %s", final)
        return final
    with atomic_dir(final) as tmp:
        build(tmp)
    return final


def _download_from_hub(repo_id: str, revision: str) -> tuple[Path, str]:
    offline_hint = (
        f"model: cannot download '{repo_id}' at revision '{revision}' from the Hugging Face hub (offline or "
        "unreachable, and not in the local hub cache); pass a local folder with -P model=/path/to/model or use the "
        "bundled model with -P model=bundled:smollm2-135m-instruct"
    )
    return download_from_hub(repo_id, revision, HUB_ALLOW_PATTERNS, offline_hint)


def download_from_hub(repo_id: str, revision: str, allow_patterns: list[str], offline_hint: str,
                      param: str = "model", revision_param: str = "revision",
                      ignore_patterns: list[str] | None = None) -> tuple[Path, str]:
    """``snapshot_download`` of the files matching ``allow_patterns`` at ``revision``; return the snapshot folder and
    the commit it resolved to. Offline (and not in the local hub cache) it fails at once with ``offline_hint``; other
    errors name ``param`` (the repository) or ``revision_param``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kwargs = {"revision": revision, "allow_patterns": allow_patterns, "etag_timeout": 10}
    if ignore_patterns:
        kwargs["ignore_patterns"] = ignore_patterns
    try:
        path = snapshot_download(repo_id, **kwargs)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise SourceError(f"{param}: hub repository '{repo_id}' not found or not accessible "
                          f"(set HF_TOKEN for gated models): {type(exc).__name__}") from None
    except RevisionNotFoundError:
        raise SourceError(f"{revision_param}: '{revision}' does not exist in hub repository '{repo_id}'") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        logger.debug("hub download failed: %r", exc)
        raise SourceError(offline_hint) from None
    path = Path(path)
    # snapshot folders are named after the commit they resolved to.
    resolved = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else revision
    if os.environ.get("HF_HUB_OFFLINE") and resolved == revision:
        logger.warning("HF_HUB_OFFLINE is set: revision '%s' resolved from the local cache only", revision)
    return path, resolved
