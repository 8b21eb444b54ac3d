"""One onnxruntime-genai model folder: the loaded ``og.Model`` and tokenizer, the facts of its ``genai_config.json``
(context length, EOS and pad ids), and fresh generators over right-padded prompt rows.

The only module that touches the ``onnxruntime_genai`` API (imported on load: an optional, heavy dependency).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from chatpack.engine.search_options import search_options
from chatpack.protocol.chat_request import GenerationOptions


class GenaiModel:
    """``og.Model`` + ``og.Tokenizer`` of ``model_dir``; ``threads`` sets the decoder's intra-op threads (None: the
    onnxruntime default)."""

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(model_dir))
        if threads:
            session = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        facts = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]
        self.context_length = int(facts["context_length"])
        eos = facts.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(facts.get("pad_token_id", next(iter(self.eos_ids), 0)))

    def generator(self, prompts: list[list[int]], options: GenerationOptions, max_new: int) -> Any:
        """A fresh generator with ``prompts`` appended (one row each, right-padded to the longest), searching with
        ``options`` for up to ``max_new`` tokens past the longest prompt."""
        width = max(len(p) for p in prompts)
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**search_options(options, width, max_new, self.context_length, len(prompts)))
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(np.array([p + [self.pad_id] * (width - len(p)) for p in prompts], dtype=np.int32))
        return generator
