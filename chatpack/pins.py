"""The project's pinned requirements, read from requirements.txt, and the pins each logged model declares.

Logged models list exact versions taken from the running environment, so what a model says it needs is what it was
logged and tested with; tests/test_pins.py checks those versions equal the project's pins.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;#]+)")

# What each logged flavour imports at load/predict time (distribution names).
TRANSFORMERS_MODEL_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "accelerate", "safetensors", "numpy",
                               "pandas")
ONNX_MODEL_PACKAGES = ("mlflow", "onnxruntime", "onnxruntime-genai", "llguidance", "onnx", "numpy", "pandas",
                       "pydantic")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines to {normalised name: version}; other lines (comments, -r, -c) are skipped."""
    pins: dict[str, str] = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(3)
    return pins


def read_requirements(path: Path) -> dict[str, str]:
    return parse_pins(Path(path).read_text().splitlines())


def installed_pins(packages: tuple[str, ...]) -> list[str]:
    """``name==version`` for each package as installed in this environment (torch without its local tag)."""
    out = []
    for name in packages:
        version = importlib.metadata.version(name)
        out.append(f"{name}=={version.split('+')[0]}")
    return out
