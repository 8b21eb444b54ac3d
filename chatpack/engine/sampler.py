"""Choosing one row's next token from its logits: greedy, or sampled with the request's own seed.

Every row of a batch samples for itself, so requests with different temperatures, top-p/top-k and seeds share a
batch, and a seeded request draws the same tokens whoever it shares the batch with. Sampling follows the usual
order: temperature, top-k, softmax, top-p (the smallest set of most likely tokens whose mass reaches ``top_p``).
A ``top_k`` the request does not set is the model's (``genai_config.json``'s search ``top_k``, as the
onnxruntime-genai path uses); a seed is any int (NumPy's generator takes it whole).
"""

from __future__ import annotations

import numpy as np

from chatpack.protocol.chat_request import GenerationOptions


class Sampler:
    """The next-token rule of one request (``options`` already merged with the model's defaults)."""

    def __init__(self, options: GenerationOptions, default_top_k: int | None = None):
        self.temperature = float(options.temperature or 0.0)
        self.top_p = options.top_p if options.top_p is not None else 1.0
        self.top_k = options.top_k if options.top_k is not None else default_top_k
        self._rng = np.random.default_rng(options.seed) if self.temperature else None

    @property
    def greedy(self) -> bool:
        return self._rng is None

    def choose(self, logits: np.ndarray) -> int:
        """The next token from one position's ``logits`` [vocab]."""
        if self._rng is None:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / self.temperature
        if self.top_k and self.top_k < scores.size:
            candidates = np.argpartition(scores, -self.top_k)[-self.top_k:]
        else:
            candidates = np.arange(scores.size)
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        probs = np.exp(scores[order] - scores[order[0]])
        probs /= probs.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self._rng.choice(len(order), p=probs)])
