"""One onnxruntime-genai model folder: the loaded ``og.Model`` and tokenizer, the facts of its ``genai_config.json``
(context length, EOS and pad ids), and fresh generators over right-padded prompt rows.

A generator is made in two steps: :meth:`GenaiModel.create` (search options and the decoding constraint, which
LLGuidance compiles here: no model compute, so it may run while another request holds the model) and
:meth:`GenaiModel.fill` (the prompt's prefill: model compute). A constraint that does not compile, or takes longer
than :data:`MAX_COMPILE_SECONDS`, raises :class:`~chatpack.engine.guidance.GuidanceError`.

The only module that touches the ``onnxruntime_genai`` API (imported on load: an optional, heavy dependency).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from chatpack.engine.guidance import GuidanceError
from chatpack.engine.search_options import search_options
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.protocol.reply_format import Guidance

logger = logging.getLogger(__name__)

MAX_COMPILE_SECONDS = 2.0  # a constraint that takes longer to compile is refused (the size limits keep it rare)
_WARM_UP = Guidance("json_schema", '{"type": "object"}')


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
        config = json.loads((Path(model_dir) / "genai_config.json").read_text())
        facts = config["model"]
        self.default_top_k = config.get("search", {}).get("top_k")  # what sampling uses when a request sets none
        self.context_length = int(facts["context_length"])
        self.vocab_size = int(facts["vocab_size"]) if facts.get("vocab_size") else None
        eos = facts.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(facts.get("pad_token_id", next(iter(self.eos_ids), 0)))

    def generator(self, prompts: list[list[int]], options: GenerationOptions, max_new: int) -> Any:
        """A fresh generator with ``prompts`` appended (one row each, right-padded to the longest), searching with
        ``options`` for up to ``max_new`` tokens past the longest prompt."""
        return self.fill(self.create(max(len(p) for p in prompts), len(prompts), options, max_new), prompts)

    def create(self, width: int, rows: int, options: GenerationOptions, max_new: int) -> Any:
        """A generator for ``rows`` prompts of (padded) ``width`` tokens, not yet filled; compiles the constraint."""
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**search_options(options, width, max_new, self.context_length, rows,
                                                  self.vocab_size))
        if options.guidance is None:
            return self._og.Generator(self.model, params)
        # No fast-forward tokens: in 0.18 forced tokens past max_length crash GroupQueryAttention.
        params.set_guidance(options.guidance.kind, options.guidance.text)
        start = time.perf_counter()
        try:
            generator = self._og.Generator(self.model, params)
        except RuntimeError as exc:  # LLGuidance: "Error creating grammar: <reason>"
            if not str(exc).startswith("Error creating grammar"):
                raise
            raise GuidanceError(str(exc).removeprefix("Error creating grammar:").strip()) from None
        seconds = time.perf_counter() - start
        if seconds > MAX_COMPILE_SECONDS:
            raise GuidanceError(f"took {seconds:.1f} s to compile (at most {MAX_COMPILE_SECONDS:g} s): simplify it")
        return generator

    def fill(self, generator: Any, prompts: list[list[int]]) -> Any:
        """Append ``prompts`` (right-padded to the longest) to a generator from :meth:`create`; return it."""
        width = max(len(p) for p in prompts)
        generator.append_tokens(np.array([p + [self.pad_id] * (width - len(p)) for p in prompts], dtype=np.int32))
        return generator

    def check(self, guidance: Guidance) -> None:
        """Compile ``guidance`` alone (raises :class:`GuidanceError` when it does not compile)."""
        self.create(1, 1, GenerationOptions(guidance=guidance), 1)

    def warm_up(self) -> float:
        """Build LLGuidance's index of the vocabulary once (about 1 s for a 49k vocabulary), so that no request pays
        for it; return the seconds it took."""
        start = time.perf_counter()
        self.check(_WARM_UP)
        return time.perf_counter() - start
