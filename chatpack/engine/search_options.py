"""Request options -> onnxruntime-genai search options (``GeneratorParams.set_search_options`` keyword arguments).

Greedy unless ``temperature > 0``: ``temperature``/``top_p``/``top_k``/``seed`` are passed only when sampling (the
0.18 bindings ignore them without ``do_sample``). onnxruntime-genai takes a 32-bit seed: a larger ``seed`` (requests
take any int64) is used modulo 2**31; a ``top_k`` above the vocabulary (which onnxruntime-genai refuses) keeps every
token, so it is capped at the vocabulary size. ``max_length`` counts the prompt (the padded width, for a batch)
plus the new tokens and may not exceed the model's context.
"""

from __future__ import annotations

from typing import Any

from chatpack.protocol.chat_request import GenerationOptions

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
