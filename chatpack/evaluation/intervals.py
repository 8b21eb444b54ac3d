"""95% bootstrap intervals for quality scores: of one model's mean row score, and paired, of the gap between the
reference's and a candidate's mean row scores on the same prompts (resampling prompts, keeping each prompt's pair).

Seeded, so the same scores always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95
SEED = 15


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, fmt: str = ".3f") -> str:
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[picks].mean(axis=1)


def _interval(values: np.ndarray, resamples: int, seed: int) -> Interval:
    if len(values) == 0:
        raise ValueError("a bootstrap interval needs at least one score")
    means = _resampled_means(values, resamples, seed)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high))


def mean_interval(scores: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean of ``scores`` with its 95% percentile-bootstrap interval."""
    return _interval(np.asarray(scores, dtype=float), resamples, seed)


def paired_gap_interval(reference: Sequence[float], candidate: Sequence[float], resamples: int = RESAMPLES,
                        seed: int = SEED) -> Interval:
    """``mean(reference) - mean(candidate)`` over the same prompts, with its 95% paired-bootstrap interval."""
    ref, cand = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if ref.shape != cand.shape:
        raise ValueError(f"paired scores differ in length: {len(ref)} vs {len(cand)}")
    return _interval(ref - cand, resamples, seed)
