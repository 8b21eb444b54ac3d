"""Decoding constraints as token masks, one per KV row: grammars compiled once (bounded in time, cached), one matcher
per reply, and the masks of a step's constrained rows computed together.

The grammar work is LLGuidance's (the ``llguidance`` package, the library onnxruntime-genai embeds; measured against
xgrammar in ``benchmarks/bench_grammar.py``): a :class:`~chatpack.protocol.reply_format.Guidance` (``json_schema``,
``regex`` or ``lark_grammar``, see :mod:`chatpack.engine.guidance`) becomes an ``LLMatcher`` over the model's own
tokenizer (its ``tokenizer.json``, with the model's vocabulary size and EOS ids).

- **Compile once, bounded.** :class:`Grammars` keeps compiled matchers in an LRU cache keyed by the constraint
  (one cache per model, so per tokenizer); a request gets a copy of the compiled matcher (``deep_copy``: ~0.1 ms
  where a compile takes 1-10 ms, and seconds for large schemas). Compiles run on a small pool of their own, never on
  the batch thread; a compile that takes longer than ``compile_seconds`` is refused with
  :class:`~chatpack.engine.guidance.GuidanceError` at once (the compile finishes in the background and is cached, so
  a resend of the same constraint is served from the cache, and another request for it waits on the same compile).
  LLGuidance's own parser limits bound each mask step's work.
- **Masks in the batch.** :class:`RowMatcher` follows one reply: the allowed tokens for its next position, the token
  drawn (fed back), the tokens the grammar forces next (fast-forward), and whether only the end of the reply is left.
  :func:`fill_masks` computes the masks of every constrained row of a step in one call that releases the GIL and runs
  on LLGuidance's own threads, so the batch loop computes them while onnxruntime runs the step (a row's mask depends
  on the tokens it has taken, not on the step's logits).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from chatpack.engine.guidance import GuidanceError
from chatpack.protocol.reply_format import Guidance

DEFAULT_COMPILE_SECONDS = 5.0  # a constraint that takes longer to compile is refused (serve --compile_timeout_s)
DEFAULT_CACHE_SIZE = 256  # compiled constraints kept (least recently used dropped first)
FAST_FORWARD_MIN = 2  # forced tokens worth a pass of their own
COMPILE_WORKERS = 2  # compiles at once (each releases the GIL; a long one never holds the batch)
_WARM_UP = Guidance("json_schema", '{"type": "object"}')


class Grammars:
    """The compiled constraints of one model: its tokenizer as LLGuidance sees it, the LRU cache of compiled
    matchers, the compile pool and the executor that computes a step's masks."""

    def __init__(self, model_dir: str | Path, vocab_size: int, eos_ids: set[int],
                 compile_seconds: float = DEFAULT_COMPILE_SECONDS, cache_size: int = DEFAULT_CACHE_SIZE,
                 mask_threads: int | None = None):
        import llguidance
        import llguidance.numpy

        self._llg = llguidance
        tokenizer_json = (Path(model_dir) / "tokenizer.json").read_text()
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=sorted(eos_ids))
        self.vocab_size, self.eos_ids = vocab_size, set(eos_ids)
        self.compile_seconds, self.cache_size = float(compile_seconds), int(cache_size)
        self.executor = llguidance.LLExecutor(num_threads=mask_threads or 2)
        self._pool = ThreadPoolExecutor(COMPILE_WORKERS, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[tuple[str, str], Future] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"compiles": 0, "cache_hits": 0, "compile_timeouts": 0}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def matcher(self, guidance: Guidance) -> RowMatcher:
        """A fresh matcher for one reply under ``guidance`` (compiled now, or copied from the cache); raises
        :class:`GuidanceError` when it does not compile, or not within ``compile_seconds``."""
        return RowMatcher(self.compiled(guidance).deep_copy(), self)

    def check(self, guidance: Guidance) -> None:
        """Compile ``guidance`` (raises :class:`GuidanceError` when it does not compile in time)."""
        self.compiled(guidance)

    def compiled(self, guidance: Guidance) -> Any:
        key = (guidance.kind, guidance.text)
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
            else:
                future = self._pool.submit(self._compile, guidance)
                self._cache[key] = future
                self.stats["compiles"] += 1
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        try:
            matcher = future.result(timeout=self.compile_seconds)
        except FutureTimeout:
            with self._lock:
                self.stats["compile_timeouts"] += 1
            raise GuidanceError(f"takes more than {self.compile_seconds:g} s to compile: simplify it") from None
        except GuidanceError:
            with self._lock:  # a constraint that fails is not kept (its error is cheap to find again)
                if self._cache.get(key) is future:
                    del self._cache[key]
            raise
        return matcher

    def _compile(self, guidance: Guidance) -> Any:
        llg = self._llg
        try:
            if guidance.kind == "json_schema":
                grammar = llg.LLMatcher.grammar_from_json_schema(guidance.text)
            elif guidance.kind == "regex":
                grammar = llg.LLMatcher.grammar_from_regex(guidance.text)
            elif guidance.kind == "lark_grammar":
                grammar = llg.LLMatcher.grammar_from_lark(guidance.text)
            else:
                raise GuidanceError(f"unknown constraint kind {guidance.kind!r}")
        except ValueError as exc:  # not a JSON object
            raise GuidanceError(str(exc)) from None
        matcher = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GuidanceError(_reason(matcher.get_error()))
        return matcher

    def warm_up(self) -> float:
        """Compile a first constraint (LLGuidance builds its index of the vocabulary lazily); the seconds it took."""
        start = time.perf_counter()
        self.matcher(_WARM_UP).allowed()
        return time.perf_counter() - start


def _reason(error: str) -> str:
    """LLGuidance's error text without its wrapper ("Error creating grammar: ...", a JSON compile prefix)."""
    for prefix in ("Error creating grammar:", "grammar error:"):
        error = error.removeprefix(prefix).strip()
    return error


class RowMatcher:
    """One reply's constraint state (see the module docstring)."""

    def __init__(self, matcher: Any, grammars: Grammars):
        self.matcher, self.grammars = matcher, grammars
        self.taken = 0  # tokens consumed

    @property
    def finished(self) -> bool:
        """Only the end of the reply (an EOS token) is allowed now."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() or None if self.matcher.is_error() else None

    def consume(self, token: int) -> None:
        """Feed the drawn ``token`` back (an EOS token ends the grammar)."""
        if not self.matcher.consume_token(int(token)):
            raise GuidanceError(f"token {token} broke the constraint: {self.matcher.get_error()}")
        self.taken += 1

    def forced(self, limit: int) -> list[int]:
        """The tokens (at most ``limit``) the grammar allows as the only continuation from here, not consumed yet;
        [] when fewer than :data:`FAST_FORWARD_MIN` (a pass of their own costs about a decode step)."""
        forced = [] if self.matcher.is_stopped() else list(self.matcher.compute_ff_tokens())[:limit]
        return forced if len(forced) >= FAST_FORWARD_MIN else []

    def allowed(self) -> np.ndarray:
        """This row's mask alone (bool [vocab])."""
        bitmask = np.full((1, (self.grammars.vocab_size + 31) // 32), -1, np.int32)
        self.grammars._llg.numpy.fill_next_token_bitmask(self.matcher, bitmask, 0)
        return unpack(bitmask[0], self.grammars.vocab_size)


def fill_masks(grammars: Grammars, matchers: list[RowMatcher]) -> np.ndarray:
    """The masks of ``matchers`` (bool [len, vocab]), computed together on LLGuidance's threads (GIL released)."""
    from llguidance.numpy import fill_next_token_bitmask_par

    bitmask = np.full((len(matchers), (grammars.vocab_size + 31) // 32), -1, np.int32)
    fill_next_token_bitmask_par(grammars.executor, [(m.matcher, i) for i, m in enumerate(matchers)], bitmask)
    return np.stack([unpack(row, grammars.vocab_size) for row in bitmask]) if matchers else bitmask.astype(bool)


class Masker:
    """The batch loop's mask thread: :meth:`start` the masks of a step's jobs before the step, ``deliver`` them
    (each constrained job's ``allowed``) after it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-masks")

    def start(self, jobs: list[Any]) -> _Masks:
        """Begin the masks of the constrained ones among ``jobs`` (:class:`~chatpack.engine.scheduler.Job`)."""
        jobs = [job for job in jobs if job.matcher is not None]
        matchers = [job.matcher for job in jobs]
        return _Masks(self._pool.submit(fill_masks, matchers[0].grammars, matchers) if jobs else None, jobs)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class _Masks:
    def __init__(self, future: Future | None, jobs: list[Any]):
        self._future, self._jobs = future, jobs

    def deliver(self) -> None:
        """Wait for the masks; set each job's ``allowed``."""
        for job, allowed in zip(self._jobs, self._future.result() if self._future is not None else ()):
            job.allowed = allowed


def unpack(bits: np.ndarray, vocab_size: int) -> np.ndarray:
    """A 32-bit-word bitmask (bit j of word i: token 32 i + j) as bool [vocab_size]."""
    return np.unpackbits(bits.view(np.uint8), bitorder="little")[:vocab_size].astype(bool)


def masked(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``logits`` with every token the mask forbids at -inf (a copy: the raw logits stay for logprobs)."""
    return np.where(allowed, logits, -np.inf).astype(np.float32, copy=False)
