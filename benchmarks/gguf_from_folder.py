"""GGUF files for the llama.cpp peers, converted from the same transformers folder our pipeline fetched, with the
converter and quantiser in llama.cpp's own source (the llama-cpp-python sdist that ``build_llama_server.sh`` unpacks
and builds with ``TARGETS="llama-server llama-bench llama-quantize"``).

    python -m benchmarks.gguf_from_folder --hf_dir <folder> --out_dir <folder> [--types Q4_0,Q8_0] [--name NAME]

Writes ``<out_dir>/<name>-BF16.gguf`` (name: the folder's, by default; the converter's lossless output), then one
``<name>-<TYPE>.gguf`` per type (``llama-quantize``), skipping files that already exist; prints their paths last.

For ``fixture:random-phi3-mini-4k`` the converter needs two things told that it cannot find out: its Phi-3 class reads
only a SentencePiece ``tokenizer.model``, and its BPE pre-tokenizer check knows only published tokenizers' hashes. The
stand-in's tokenizer is a GPT-2-style byte-level BPE, so the converter runs with its GPT-2 vocabulary path and the
``gpt-2`` pre-tokenizer for such folders (patched in the converter's process only; folders with a ``tokenizer.model``
or a known hash convert as llama.cpp does).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks import common

BOOTSTRAP = r"""
import runpy, sys
llama_dir, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [llama_dir, llama_dir + "/gguf-py"]
from conversion import base, phi
set_vocab = phi.Phi3MiniModel.set_vocab
def gpt2_unless_sentencepiece(self):
    if (self.dir_model / "tokenizer.model").is_file():
        return set_vocab(self)
    return self._set_vocab_gpt2()
phi.Phi3MiniModel.set_vocab = gpt2_unless_sentencepiece
vocab_base_pre = base.TextModel.get_vocab_base_pre
def gpt2_when_unknown(self, tokenizer):
    try:
        return vocab_base_pre(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = gpt2_when_unknown
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


def llama_source(server: str | None) -> Path:
    """llama.cpp's source folder that the built ``llama-server`` came from (``.../vendor/llama.cpp/build/bin``)."""
    if not server:
        raise SystemExit("llama-server not built: run TARGETS=\"llama-server llama-bench llama-quantize\" "
                         "bash benchmarks/build_llama_server.sh")
    return Path(server).resolve().parents[2]


def convert(hf_dir: Path, out_dir: Path, types: list[str], server: str | None, name: str = "") -> list[Path]:
    source = llama_source(server)
    quantize = source / "build" / "bin" / "llama-quantize"
    if types and not quantize.is_file():
        raise SystemExit(f"{quantize} not built: rerun build_llama_server.sh with TARGETS including llama-quantize")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or hf_dir.name
    bf16 = out_dir / f"{name}-BF16.gguf"
    if not bf16.is_file():
        partial = bf16.with_name(bf16.name + ".partial")
        subprocess.run([sys.executable, "-c", BOOTSTRAP, str(source), str(source / "convert_hf_to_gguf.py"),
                        str(hf_dir), "--outfile", str(partial), "--outtype", "bf16"], check=True)
        partial.replace(bf16)
    made = [bf16]
    for kind in types:
        target = out_dir / f"{name}-{kind}.gguf"
        if not target.is_file():
            partial = target.with_name(target.name + ".partial")
            subprocess.run([str(quantize), str(bf16), str(partial), kind, str(common.physical_cores())], check=True)
            partial.replace(target)
        made.append(target)
    return made


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf_dir", required=True, help="The transformers folder (a fetch run's hf_model, or the cache's).")
    p.add_argument("--out_dir", required=True, help="Where the GGUF files go (several GB for a 3.8B model).")
    p.add_argument("--types", default="Q4_0,Q8_0", help="llama-quantize types, comma-separated (empty: BF16 only).")
    p.add_argument("--name", default="", help="File name stem (default: the folder's name).")
    p.add_argument("--llama_server", default="", help="The built llama-server (default: as the benchmarks find it); "
                                                      "its source folder holds the converter.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_dir = Path(args.hf_dir).resolve()
    if not (hf_dir / "config.json").is_file():
        raise SystemExit(f"--hf_dir: no config.json in {hf_dir}")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for path in convert(hf_dir, Path(args.out_dir), types, common.find_llama_server(args.llama_server or None),
                        args.name):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
