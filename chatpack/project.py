"""The project itself: its root folder and the version of its code that a step run records.

The code version is the git commit of a clean checkout, or otherwise a hash of the project's code files (every
subpackage of ``chatpack``, the steps, the MLproject and pins, the shipped data): uncommitted edits count as new code,
so ``main`` reruns the steps they may change.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE_VERSION_TAG = "chatpack.code_version"
CODE_GLOBS = ("MLproject", "python_env.yaml", "conda.yaml", "requirements.txt", "steps/*.py", "chatpack/**/*.py",
              "data/*.jsonl")


def code_version(root: Path = PROJECT_ROOT) -> str:
    """``git:<commit>`` for a clean git checkout, else ``files:<sha256 of the project's code files>``."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=20)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        if status.returncode == 0 and commit.returncode == 0 and not status.stdout.strip():
            return "git:" + commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for path in sorted(p for g in CODE_GLOBS for p in root.glob(g)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "files:" + digest.hexdigest()[:20]
