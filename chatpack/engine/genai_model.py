"""One onnxruntime-genai model folder: its tokenizer, the facts of its ``genai_config.json`` (context length, EOS and
pad ids), and fresh generators over right-padded prompt rows from an ``og.Model`` loaded on first use.

What the engine still takes from onnxruntime-genai: the tokenizer (encode, decode streams, the chat template) and
the generator for a request that does not fit a KV row. Decoding constraints are no longer its LLGuidance's: the
engine masks logits itself (:mod:`chatpack.engine.grammar`), in the batch and in this generator alike.

The ``og.Model`` holds a second copy of the weights beside the KV rows' session (2.7 GB more at Phi-3-mini's int4
size), so it is loaded only when a request first needs the generator, and the tokenizer is made from the folder's
config without it: a server whose requests all fit its rows holds the weights once.

A request's options become the generator's search options (:func:`search_options`, ``set_search_options``'s keyword
arguments): greedy unless ``temperature > 0``; ``temperature``/``top_p``/``top_k``/``seed`` are passed only when
sampling (the 0.18 bindings ignore them without ``do_sample``). onnxruntime-genai takes a 32-bit seed: a larger
``seed`` (requests take any int64) is used modulo 2**31; a ``top_k`` above the vocabulary (which onnxruntime-genai
refuses) keeps every token, so it is capped at the vocabulary size. ``max_length`` counts the prompt (the padded
width, for a batch) plus the new tokens and may not exceed the model's context.

The only module that touches the ``onnxruntime_genai`` API (imported on load: an optional, heavy dependency).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from chatpack.protocol.chat_request import GenerationOptions

logger = logging.getLogger(__name__)
GENAI_SEEDS = 2**31  # random_seed is an int32 in onnxruntime-genai 0.18 (larger ones fail to convert)


def search_options(options: GenerationOptions, prompt_tokens: int, max_new: int, context_length: int,
                   batch_size: int = 1, vocab_size: int | None = None) -> dict[str, Any]:
    """Search options for ``batch_size`` rows of ``prompt_tokens`` (padded) tokens and up to ``max_new`` new ones."""
    sample = bool(options.temperature)  # temperature 0 or unset: greedy
    search: dict[str, Any] = {"max_length": min(prompt_tokens + max_new, context_length), "do_sample": sample,
                              "batch_size": batch_size}
    if sample:
        search["temperature"] = options.temperature
        if options.top_p is not None:
            search["top_p"] = options.top_p
        if options.top_k is not None:
            search["top_k"] = min(options.top_k, vocab_size) if vocab_size else options.top_k
        if options.seed is not None:
            search["random_seed"] = options.seed % GENAI_SEEDS
    return search


class GenaiModel:
    """``og.Tokenizer`` of ``model_dir`` and its ``og.Model`` when first needed; ``threads`` sets the decoder's
    intra-op threads (None: the onnxruntime default)."""

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        import onnxruntime_genai as og

        self._og, self._model, self._loading = og, None, threading.Lock()
        self._config = og.Config(str(model_dir))
        if threads:
            session = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            self._config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self.tokenizer = og.Tokenizer(self._config)
        config = json.loads((Path(model_dir) / "genai_config.json").read_text())
        facts = config["model"]
        self.default_top_k = config.get("search", {}).get("top_k")  # what sampling uses when a request sets none
        self.context_length = int(facts["context_length"])
        self.vocab_size = int(facts["vocab_size"]) if facts.get("vocab_size") else None
        eos = facts.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(facts.get("pad_token_id", next(iter(self.eos_ids), 0)))

    @property
    def loaded(self) -> bool:
        """Whether the ``og.Model`` (the generator's copy of the weights) is in memory."""
        return self._model is not None

    @property
    def model(self) -> Any:
        """The ``og.Model``, loaded on first use (once, whichever thread asks first)."""
        with self._loading:
            if self._model is None:
                start = time.perf_counter()
                self._model = self._og.Model(self._config)
                logger.info("Loaded onnxruntime-genai's generator model in %.1f s (a request needed more positions "
                            "than a KV row holds)", time.perf_counter() - start)
        return self._model

    def generator(self, prompts: list[list[int]], options: GenerationOptions, max_new: int) -> Any:
        """A fresh generator with ``prompts`` appended (one row each, right-padded to the longest), searching with
        ``options`` for up to ``max_new`` tokens past the longest prompt (a constraint is applied by the caller, to
        the logits: :func:`~chatpack.engine.detokenizer.decode`)."""
        width = max(len(p) for p in prompts)
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(**search_options(options, width, max_new, self.context_length, len(prompts),
                                                  self.vocab_size))
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(np.array([p + [self.pad_id] * (width - len(p)) for p in prompts], dtype=np.int32))
        return generator
