"""How the batch computes prompts: which passes a prompt is split into, what a KV row holds and how much of it a
prompt can reuse, recomputing an idle row's reply in prompt passes (settling), and the draft a request copies from
its own context (prompt-lookup speculation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PREFILL_CHUNK = 256  # prompt tokens per pass (bounds the work a prefill holds the batch for)
SETTLE_CHUNK = 16  # reply tokens recomputed per idle turn of the loop (a new request waits for at most one)
GEMM_TILE = 128  # a prompt pass of GEMM_TILE * k + 1 tokens computes its last one differently (see prefill_chunks)


@dataclass
class Row:
    """What one KV row holds: the tokens whose keys/values are cached, how many of them (from the start) a prompt
    pass computed (``exact``: what a later request may reuse), and the job it serves (None: idle)."""

    tokens: list[int] = field(default_factory=list)
    exact: int = 0
    job: Any = None  # a scheduler.Job
    used: float = 0.0


def unsettled(idle: list[Row], reuse: bool) -> int | None:
    """The position in ``idle`` of the most recently used row with reply tokens a prompt pass has not computed yet
    (None: none, or the model reuses no prefix)."""
    rows = [i for i, row in enumerate(idle) if reuse and len(row.tokens) - row.exact >= 2]
    return max(rows, key=lambda i: idle[i].used) if rows else None


def settle(kv: Any, rows: list[Row], active: int, reuse: bool) -> int:
    """Idle work, a few tokens at a time: recompute an idle row's reply tokens in a prompt pass, so that the next
    turn of its conversation reuses them too (a decode step's keys/values are not what a cold prompt computes).
    Returns the tokens recomputed."""
    found = unsettled(rows[active:], reuse)
    if found is None:
        return 0
    index = active + found
    row = rows[index]
    end = len(row.tokens) if len(row.tokens) - row.exact <= SETTLE_CHUNK + 1 else row.exact + SETTLE_CHUNK
    for start, stop in prefill_chunks(row.exact, end):
        kv.run(index, np.asarray([row.tokens[start:stop]]), [start])
    done, row.exact = end - row.exact, end
    return done


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
