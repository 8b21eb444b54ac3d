"""Build the onnxruntime-genai form of a transformers folder with the onnxruntime-genai model builder.

The builder runs in a subprocess: its memory (several GB for billion-parameter models) is returned to the system when
it ends, and a crash inside it cannot leave this process in a bad state. Its output is kept as ``builder.log``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PRECISIONS = ("int4", "int8", "fp16", "fp32")
EXECUTION_PROVIDERS = ("cpu", "cuda")
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
BUILDER_LOG = "builder.log"


class BuildError(RuntimeError):
    """The model builder failed; the message carries the tail of its log."""


def builder_version() -> str:
    return importlib.metadata.version("onnxruntime-genai")


def check_build_options(precision: str, execution_provider: str, block_size: int, accuracy_level: int) -> None:
    """Validate the builder flags up front, naming the parameter at fault."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if execution_provider not in EXECUTION_PROVIDERS:
        raise ValueError(f"execution_provider: '{execution_provider}' is not one of {', '.join(EXECUTION_PROVIDERS)}")
    if block_size and block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size: {block_size} is not one of {BLOCK_SIZES} (0 = the builder's default)")
    if accuracy_level and accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level: {accuracy_level} is not one of {ACCURACY_LEVELS} "
                         "(0 = the builder's default)")
    if precision in ("fp16", "fp32") and (block_size or accuracy_level):
        raise ValueError(f"block_size/accuracy_level: only apply to int4/int8, not precision={precision}")


def build_onnx(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    execution_provider: str,
    cache_dir: Path,
    options: dict[str, str] | None = None,
) -> None:
    """Run the model builder on ``hf_dir`` and write the genai model into ``out_dir`` (which must exist)."""
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out_dir), "-p", precision, "-e", execution_provider, "-c", str(cache_dir),
    ]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    cache_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(out_dir) / BUILDER_LOG
    logger.info("Building ONNX %s/%s: %s", precision, execution_provider, " ".join(cmd))
    with open(log_path, "w") as log, tqdm(desc=f"onnx build ({precision}, {execution_provider})", unit=" lines") as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            bar.update(1)
            if line.startswith(("Reading", "Saving GenAI", "Saving processing")):
                bar.set_postfix_str(line.strip()[:60])
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise BuildError(f"onnxruntime-genai model builder exited with {code}: " + " | ".join(tail))
    if not (Path(out_dir) / "genai_config.json").is_file():
        raise BuildError(f"onnxruntime-genai model builder wrote no genai_config.json into {out_dir}")
