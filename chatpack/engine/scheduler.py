"""Who gets the model when, and how much of it: the model lock, a request's place in line, the KV rows' layout.

One computation runs at a time (the onnxruntime-genai bindings hold the GIL and are not documented as thread safe,
and two sessions on the same cores only slow each other): a step of the continuous batch, or a step of a lone
generator, each under the engine's model lock. The lock is first come, first served (:class:`FairLock`): a step waits
for the steps that asked before it, never for later ones, so neither path can starve the other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from chatpack.engine.decode_step import StreamState
from chatpack.protocol.chat_request import GenerationOptions

MIN_ROW_TOKENS = 1024  # fewer rows rather than rows shorter than this


@dataclass
class Pending:
    """One request, checked and budgeted: its prompt, options (merged with the model's defaults), token budget and
    reply state; ``text`` is filled in once it has been answered."""

    prompt_ids: list[int]
    options: GenerationOptions  # already merged with the model's defaults
    max_new: int
    state: StreamState
    matcher: Any = None  # the constraint's matcher (chatpack.engine.grammar.RowMatcher), made before the model is taken
    text: str = ""


class FairLock:
    """A lock granted in the order it was asked for (``threading.Lock`` lets a late arrival barge ahead)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = self._serving = 0

    def acquire(self, blocking: bool = True) -> bool:
        with self._cond:
            if not blocking and self._next_ticket != self._serving:
                return False
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            while ticket != self._serving:
                self._cond.wait()
            return True

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def locked(self) -> bool:
        with self._cond:
            return self._next_ticket != self._serving

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def row_layout(rows: int, context_length: int, bytes_per_token: int, budget: int) -> tuple[int, int]:
    """(rows, tokens per row) of the KV cache for a budget of ``budget`` bytes. Where the budget holds one row of
    the model's whole context: ``rows`` such rows (the most requests decoding together; address space, of which the
    batch keeps what is written within the budget). Below that, the old fixed layout: ``rows`` rows as long as each
    holds at least :data:`MIN_ROW_TOKENS`, fewer rows otherwise, each as long as the budget allows (a multiple of
    256), their sum within the budget; requests longer than a row then run alone."""
    if budget >= context_length * bytes_per_token:
        return rows, context_length
    floor = min(context_length, MIN_ROW_TOKENS)
    rows = max(1, min(rows, budget // (floor * bytes_per_token)))
    tokens = min(context_length, budget // (rows * bytes_per_token))
    return rows, tokens if tokens == context_length else max(floor, tokens // 256 * 256)


def make_room(kv: Any, rows: list[Any], active: int, best: int, need: int, budget_tokens: int) -> tuple[bool, int]:
    """Whether the KV rows' memory (``kv.touched``: positions written per row) stays within ``budget_tokens`` with
    row ``best`` holding ``need`` positions, and how many idle rows were given back for it. The running rows
    (``rows[:active]``) count what they were admitted with (``job.reserve``) or what they wrote, if more. Idle rows'
    memory is given back (their cached prefixes lost), least recently used first, until it fits; where giving back
    every idle row would not be enough, nothing is released and the answer is False (wait for a running row to end),
    unless none runs (a request within one row always goes in: the budget is at least one whole row)."""

    def held() -> int:
        running = sum(max(kv.touched[i], rows[i].job.reserve) for i in range(active))
        idle = sum(kv.touched[i] for i in range(active, len(rows)) if i != best)
        return running + idle + max(kv.touched[best], need)

    spare = sorted((i for i in range(active, len(rows)) if i != best and kv.touched[i]), key=lambda i: rows[i].used)
    if active and held() - sum(kv.touched[i] for i in spare) > budget_tokens:
        return False, 0  # giving back every idle row would not be enough: keep their prefixes and wait
    released = 0
    while held() > budget_tokens and spare:
        row = spare.pop(0)
        kv.release(row)
        rows[row].tokens, rows[row].exact = [], 0
        released += 1
    return True, released
