"""Token log-probabilities of a reply: the model's own distribution at each step, kept aligned with the reply's text.

Which distribution: the log-softmax of the model's raw logits at the step that produced the token, *before*
temperature, top-p/top-k and any decoding constraint (vLLM's and llama.cpp's default "raw" logprobs). So a greedy
token's logprob is the largest of its step, and a sampled or constrained token reports how likely the model itself
found it. onnxruntime-genai 0.18 computes a step's logits eagerly (after the prompt is appended, and after each
``generate_next_token`` for the following step): :func:`~chatpack.engine.detokenizer.decode` reads them *before*
asking for the next token, one row per request of a batch.

A :class:`TokenTrack` follows one reply: each counted token (an end-of-turn token is not) with its character span in
the reply's text. Entries are handed out with the text they produced: the decode step emits text only up to a token
boundary (:meth:`TokenTrack.boundary`), so a streamed chunk carries the entries of exactly the tokens its text came
from. A token's ``token`` is the text it added to the reply (a token that completes no character, such as the first
byte of a multi-byte character, adds ``""``; the character's bytes come with the token that completes it), so the
joined tokens are the reply. When a stop sequence cuts the reply, tokens after the cut are not reported and a token
the cut splits keeps only its text before the cut. Alternatives (``top``) are written as the vocabulary spells them
(:class:`Vocabulary`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for chat top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    """One reply token: its text, its logprob, and the step's ``top`` alternatives (text, logprob), best first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def log_softmax(logits: Any) -> np.ndarray:
    """The log-softmax of one row of logits (float64: exact enough that ``exp`` sums to 1)."""
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_k(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token id, logprob) pairs, best first (ties: lower id first)."""
    if k <= 0:
        return []
    k = min(k, logprobs.size)
    ids = np.argpartition(-logprobs, k - 1)[:k]
    return sorted(((int(i), float(logprobs[i])) for i in ids), key=lambda p: (-p[1], p[0]))


class Vocabulary:
    """Token ids as text, the way the token reads inside a reply (a leading space kept): ``decode([anchor, id])``
    less the anchor's own text, cached per id. ``decode`` takes a list of ids and returns text."""

    def __init__(self, decode: Callable[[list[int]], str], anchor: int):
        self._decode, self._anchor = decode, anchor
        self._prefix = decode([anchor])
        self._cache: dict[int, str] = {}

    def text(self, token: int) -> str:
        if token not in self._cache:
            both = self._decode([self._anchor, token])
            self._cache[token] = both[len(self._prefix):] if both.startswith(self._prefix) else self._decode([token])
        return self._cache[token]


@dataclass
class _Noted:
    start: int
    end: int
    token: int
    logprob: float
    top: list[tuple[int, float]]


class TokenTrack:
    """The logprobs of one reply as it decodes (see the module docstring); ``k`` alternatives per token."""

    def __init__(self, k: int, vocabulary: Vocabulary):
        self.k, self.vocabulary = k, vocabulary
        self._noted: list[_Noted] = []
        self._released = 0  # entries handed out so far

    def note(self, token: int, logits: Any, start: int, end: int) -> None:
        """Record ``token`` (sampled from ``logits``) as the text ``[start, end)`` of the reply."""
        logprobs = log_softmax(logits)
        self._noted.append(_Noted(start, end, token, float(logprobs[token]), top_k(logprobs, self.k)))

    def boundary(self, upto: int) -> int:
        """The largest token boundary at or before character ``upto`` (text may be emitted up to there)."""
        ends = [n.end for n in self._noted[self._released:] if n.end <= upto]
        if ends:
            return max(ends)
        return self._noted[self._released - 1].end if self._released else 0

    def release(self, text: str, upto: int) -> list[TokenLogprob]:
        """Entries of the tokens whose text ends at or before ``upto`` (the reply is ``text``), not handed out yet;
        at the end of the reply (``upto == len(text)``) all the rest (a token split by a stop sequence: its text
        before the cut)."""
        out, final = [], upto >= len(text)
        while self._released < len(self._noted):
            n = self._noted[self._released]
            if n.end > upto and not final:
                break
            piece = text[n.start:min(n.end, len(text))]
            top = tuple((piece if t == n.token else self.vocabulary.text(t), lp) for t, lp in n.top)
            out.append(TokenLogprob(piece, n.logprob, top))
            self._released += 1
        return out

    def cut(self, at: int) -> None:
        """The reply was cut at character ``at`` (a stop sequence): forget the tokens that start after it."""
        self._noted = [n for n in self._noted if n.start < at or n.start == n.end == at]
