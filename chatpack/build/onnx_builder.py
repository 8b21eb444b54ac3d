"""Build the onnxruntime-genai form of a transformers folder with the onnxruntime-genai model builder.

The builder runs in a subprocess: its memory (several GB for billion-parameter models) is returned to the system when
it ends, and a crash inside it cannot leave this process in a bad state. Its output is kept as ``builder.log``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from chatpack.engine.memory import available_memory

logger = logging.getLogger(__name__)

PRECISIONS = ("int4", "int8", "fp16", "fp32")
EXECUTION_PROVIDERS = ("cpu", "cuda")
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
BUILDER_LOG = "builder.log"
# The builder's peak resident memory grows with the model: measured here (/usr/bin/time -v, int4, CPU) 8.5 GB for a
# 1.1B-parameter model and 20.8 GB for the 3.8B Phi-3-mini stand-in (fixture:random-phi3-mini-4k), i.e. about
# 3.5 GB + 4.5 bytes per parameter. Other precisions are assumed to need the same (not measured).
PEAK_FIXED_BYTES = 3.5e9
PEAK_BYTES_PER_PARAMETER = 4.5
SKIP_MEMORY_CHECK_ENV = "CHATPACK_SKIP_MEMORY_CHECK"  # "1": build even when the estimate says it will not fit


class BuildError(RuntimeError):
    """The model builder failed; the message carries the tail of its log."""


class NotEnoughMemory(ValueError):
    """The builder would need more memory than this machine has available (refused before it starts)."""


def model_parameters(hf_dir: Path) -> int | None:
    """The parameter count of a transformers folder, read from its safetensors headers (no weights loaded); None
    when it has no safetensors files."""
    total, files = 0, sorted(Path(hf_dir).glob("*.safetensors"))
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total if files else None


def builder_peak_bytes(parameters: int) -> int:
    """The builder's expected peak resident memory for a model of ``parameters`` (see PEAK_BYTES_PER_PARAMETER)."""
    return int(PEAK_FIXED_BYTES + PEAK_BYTES_PER_PARAMETER * parameters)


def check_builder_memory(hf_dir: Path, precision: str) -> None:
    """Refuse, before it starts, a build that would not fit in the memory available: the builder would otherwise be
    killed by the kernel minutes in, with no useful message. ``CHATPACK_SKIP_MEMORY_CHECK=1`` skips the check."""
    parameters = model_parameters(hf_dir)
    if parameters is None or os.environ.get(SKIP_MEMORY_CHECK_ENV) == "1":
        return
    need, have = builder_peak_bytes(parameters), available_memory()
    if need > have:
        raise NotEnoughMemory(
            f"onnx_source: not set, so the {precision} ONNX form is built here, and for this "
            f"{parameters / 1e9:.1f}B-parameter model the onnxruntime-genai builder needs about {need / 2**30:.1f} GiB "
            f"of memory (it peaked at 20.8 GB for Phi-3-mini's 3.8B here); {have / 2**30:.1f} GiB is available. Use a "
            "published build (-P onnx_source=<hub id or folder>[:<subfolder>], e.g. microsoft/Phi-3-mini-4k-instruct-"
            "onnx:cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4), free memory or use a larger machine, or set "
            f"{SKIP_MEMORY_CHECK_ENV}=1 to try anyway")
    logger.info("ONNX build of %.2fB parameters: ~%.1f GiB expected at peak, %.1f GiB available", parameters / 1e9,
                need / 2**30, have / 2**30)


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
