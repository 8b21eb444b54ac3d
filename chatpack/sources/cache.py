"""A local, content-keyed cache whose entries appear atomically.

An entry is a directory that is built under a temporary name beside its final place and renamed into place only
when complete, so an interrupted fetch or build never leaves a half-written folder that a later run trusts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_ENV = "CHATPACK_CACHE_DIR"
_PARTIAL = ".partial-"
# A partial directory older than this is left over by a dead process and may be removed.
_STALE_SECONDS = 6 * 3600


def cache_root() -> Path:
    """The project's cache: ``$CHATPACK_CACHE_DIR``, else ``~/.cache/chatpack``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(Path.home(), ".cache", "chatpack")
    return Path(root).expanduser()


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the inputs that determine an entry's content."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished entry (it was renamed into place, so it is whole)."""
    return path.is_dir() and not path.name.startswith(_PARTIAL)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success rename it to ``final``, on any error delete it.

    If another process finished ``final`` first, its entry wins and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final.parent)
    tmp = final.parent / f"{_PARTIAL}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(final):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("%s was completed by another process; keeping that copy", final)
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def dir_bytes(path: Path) -> int:
    """Total size in bytes of the regular files under ``path`` (links followed)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _remove_stale_partials(parent: Path) -> None:
    now = time.time()
    for entry in parent.glob(f"{_PARTIAL}*"):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
