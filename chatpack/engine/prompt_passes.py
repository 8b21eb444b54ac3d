"""How the batch computes prompts: which passes a prompt is split into, how much of a cached row a prompt can reuse,
and the draft a request copies from its own context (prompt-lookup speculation)."""

from __future__ import annotations

import numpy as np

PREFILL_CHUNK = 256  # prompt tokens per pass (bounds the work a prefill holds the batch for)
GEMM_TILE = 128  # a prompt pass of GEMM_TILE * k + 1 tokens computes its last one differently (see prefill_chunks)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return int(np.argmin(np.asarray(a[:n]) == np.asarray(b[:n])))


def prefill_chunks(start: int, end: int, size: int = PREFILL_CHUNK) -> list[tuple[int, int]]:
    """Prompt positions ``start..end`` in passes of at most ``size`` that compute every position the same way,
    however the prompt is split (so a reused prefix plus the rest is exactly the cold prompt).

    Two kinds of pass would not (measured on the bundled model, onnxruntime 1.32 CPU; up to ~0.9 in a logit): one new
    token after a past, which the graph runs as a decode step, and a pass of 128k + 1 tokens, whose last row the
    matrix multiplications take through their one-row path. Such a pass is split as its first tokens and its last 2.
    """
    bounds = list(range(start, end, size)) + [end]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    chunks: list[tuple[int, int]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunks += [(a, b - 2), (b - 2, b)] if b - a > 1 and (b - a) % GEMM_TILE == 1 else [(a, b)]
    return chunks


def draft_tokens(history: list[int], ngram: int, longest: int) -> list[int]:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of ``history``'s last ``ngram`` tokens
    (at most ``longest``), or [] when they did not occur before."""
    if longest <= 0 or len(history) <= ngram:
        return []
    tail, seq = history[-ngram:], np.asarray(history[:-1])
    for start in np.flatnonzero(seq[: len(seq) - ngram + 1] == tail[0])[::-1]:
        if history[start: start + ngram] == tail:
            return history[start + ngram: start + ngram + longest]
    return []
