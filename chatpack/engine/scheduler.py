"""Who gets the model and the KV rows, and when: the model lock, the line of requests waiting for a row, and the
continuous batch's admission decisions.

One computation runs at a time (the onnxruntime-genai bindings hold the GIL and are not documented as thread safe,
and two sessions on the same cores only slow each other): a step of the continuous batch, or a step of a lone
generator, each under the engine's model lock. The lock is first come, first served (:class:`FairLock`): a step waits
for the steps that asked before it, never for later ones, so neither path can starve the other.

The batch (:class:`~chatpack.engine.batch_loop.BatchLoop`) runs what its :class:`Scheduler` decides. Requests
(:class:`Job`) wait in line first come, first served; between two decode steps, while a row is free, the first in
line is given an idle row: the one that holds the longest prefix of its prompt as a prompt pass computed it (prefix
reuse; a decoding row is never idle), else the least recently used one, so that the others keep their caches. Under
a KV budget (positions written, all rows together) a request goes in only where the rows' memory stays within it:
running rows count what they were admitted with (the prompt and up to :data:`REPLY_HEADROOM` reply tokens) or what
they wrote, if more; idle rows' memory is given back, least recently used first, to make room; where even giving
back every idle row would not be enough, the request waits, first in line, for a running row to end. When nothing
waits and nothing runs, the loop's turn goes to settling an idle row's reply
(:func:`~chatpack.engine.prompt_passes.settle`).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from chatpack.engine.detokenizer import RowDecoder, StreamState
from chatpack.engine.grammar import RowMatcher
from chatpack.engine.prompt_passes import Row, common_prefix, unsettled
from chatpack.engine.sampler import Sampler

logger = logging.getLogger(__name__)
REPLY_HEADROOM = 256  # reply tokens a request is admitted with room for (its reply may grow past them)
END = object()  # the end of a job's pieces
# The thread a job counts as submitted by, when not the one that submits it (a model answering a request's rows from
# a pool of its own sets the request's thread here, so that cancelling that thread reaches them).
OWNER: contextvars.ContextVar[int | None] = contextvars.ContextVar("chatpack_job_owner", default=None)


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


@dataclass
class Job:
    """One request in (or waiting for) a row: its decoder, sampler and (constrained) matcher, and the queue its text
    goes out through while the loop runs ahead of its reader. Its decoder fills in its own :class:`StreamState` as
    the loop runs ahead; ``state`` (the caller's) is brought up to each piece as the reader takes it, so that after a
    piece it holds that piece's counts and logprob entries, no later ones."""

    prompt_ids: list[int]
    decoder: RowDecoder
    sampler: Sampler
    state: StreamState
    pieces: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    error: BaseException | None = None
    matcher: RowMatcher | None = None  # the reply's constraint (None: free)
    allowed: Any = None  # the matcher's mask (bool [vocab]) for the position whose logits come next
    next_token: int | None = None  # chosen, its KV not yet cached
    forced: list[int] = field(default_factory=list)  # tokens the constraint forces after next_token (fast-forward)
    thread: int = field(default_factory=lambda: OWNER.get() or threading.get_ident())  # see Scheduler.cancel_thread
    reserve: int = 0  # the KV positions it was admitted with (prompt + the first reply tokens)
    waited: bool = False  # whether it ever waited for KV memory

    def put(self, piece: object) -> None:
        """Hand ``piece`` (text, or :data:`END`) to the reader with the decoder's state as of now."""
        made = self.decoder.state
        self.pieces.put((piece, made.completion_tokens, made.finish_reason, len(made.logprobs or ())))

    def fail(self, exc: BaseException) -> None:
        """End a job that holds no row with ``exc`` (raised to its reader)."""
        self.error = exc
        self.put(END)

    def results(self) -> Iterator[str]:
        """The job's text pieces as they come; re-raises its failure; closing the iterator cancels the job."""
        made = self.decoder.state
        try:
            while True:
                piece, self.state.completion_tokens, self.state.finish_reason, entries = self.pieces.get()
                if made.logprobs is not None:
                    self.state.logprobs = (self.state.logprobs or []) + made.logprobs[len(self.state.logprobs or ()):
                                                                                      entries]
                if piece is END:
                    break
                yield piece
            if self.error is not None:
                raise self.error
        finally:
            self.cancelled = True


@dataclass(frozen=True)
class Admission:
    """A job going in now: the idle row it goes into (its index before the batch moves it to the active region)
    and how many of its prompt's tokens that row already holds (its prefill starts after them)."""

    job: Job
    row: int
    reuse: int


class Scheduler:
    """The line of jobs waiting for a row, and which one goes into which row, when (see the module docstring).

    ``rows``: the batch's rows (its list, active rows first: ``rows[:active]``, the idle ones after them, each
    :class:`~chatpack.engine.prompt_passes.Row` holding what a later prompt may reuse); ``capacity``: the most rows
    that decode together; ``reuse``: whether a prompt may reuse a row's prefix; ``budget_tokens``: the KV positions
    all rows together may hold (None: every row may fill up). Of ``kv`` (:class:`~chatpack.engine.kv_rows.KvRows`)
    it reads ``touched`` (positions written per row) and ``row_tokens``, and calls ``release`` to give an idle row's
    memory back. ``stats`` (the batch's counters) counts ``waited_for_memory`` and ``released_rows``."""

    def __init__(self, kv: Any, rows: list[Row], capacity: int, reuse: bool, budget_tokens: int | None = None,
                 stats: dict[str, int] | None = None):
        self.kv, self.rows, self.capacity, self.reuse, self.budget_tokens = kv, rows, capacity, reuse, budget_tokens
        self.stats = stats if stats is not None else {"waited_for_memory": 0, "released_rows": 0}
        self.closed = False
        self._waiting: list[Job] = []
        self._wake = threading.Condition()

    # -- the line (any thread) -------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        with self._wake:
            return len(self._waiting)

    def submit(self, job: Job) -> Job:
        """Put ``job`` at the end of the line."""
        with self._wake:
            if self.closed:
                raise RuntimeError("the model's batch loop has stopped")
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel_thread(self, thread: int) -> int:
        """Cancel every job, waiting or in a row, that the thread ``thread`` submitted; returns how many."""
        with self._wake:
            jobs = [job for job in self._waiting + [row.job for row in self.rows if row.job is not None]
                    if job.thread == thread and not job.cancelled]
            for job in jobs:
                job.cancelled = True
            self._wake.notify()
        return len(jobs)

    def close(self) -> None:
        """Take no more jobs; wake the loop (it ends those it holds)."""
        with self._wake:
            self.closed = True
            self._wake.notify()

    def take_waiting(self) -> list[Job]:
        """Empty the line; return who was in it."""
        with self._wake:
            waiting, self._waiting = self._waiting, []
        return waiting

    # -- when (the loop's thread) ----------------------------------------------------------------------------------
    def wait_for_work(self, active: int) -> None:
        """Block while there is nothing to do: no job waits, none of the ``active`` rows runs, no idle row's reply
        is left to settle, and the line is open."""
        with self._wake:
            while (not self.closed and not self._waiting and not active
                   and unsettled(self.rows[active:], self.reuse) is None):
                self._wake.wait()

    def idle(self, active: int) -> bool:
        """Whether this turn is the idle one (no job waits, no row runs): the loop settles a reply instead."""
        with self._wake:
            return not self._waiting and not active

    # -- who goes in, where ----------------------------------------------------------------------------------------
    def admit(self, active: int) -> Admission | None:
        """The first job in line that goes in now, and its row, while one of the ``capacity`` rows is free (None: no
        free row, nobody waiting, or the first in line waits for KV memory, staying first). Cancelled jobs leave the
        line here (their readers get the end); a job whose admission fails hears about it and the next one is tried.
        """
        while active < self.capacity:
            with self._wake:
                if not self._waiting:
                    return None
                job = self._waiting.pop(0)
            if job.cancelled:
                job.put(END)
                continue
            try:
                admitted = self._place(job, active)
            except Exception as exc:  # the job hears about it; the loop goes on
                logger.exception("admission failed")
                job.fail(exc)
                continue
            if admitted is None:  # no memory for it yet: first in line when a running row ends
                with self._wake:
                    self._waiting.insert(0, job)
                if not job.waited:
                    job.waited, self.stats["waited_for_memory"] = True, self.stats["waited_for_memory"] + 1
            return admitted
        return None

    def _place(self, job: Job, active: int) -> Admission | None:
        """The idle row for ``job`` (None: not now, the KV budget is held by running rows)."""
        rows, prompt = self.rows, job.prompt_ids
        idle = range(active, len(rows))
        shared = {i: min(common_prefix(rows[i].tokens[: rows[i].exact], prompt), len(prompt) - 2) if self.reuse else 0
                  for i in idle}  # >= 2 new: a prompt pass
        best = max(idle, key=lambda i: (shared[i], rows[i].used))
        reuse = max(shared[best], 0)
        if reuse == 0:  # nothing to reuse: take the least recently used row, keep the others' caches
            best = min(idle, key=lambda i: rows[i].used)
        job.reserve = min(len(prompt) + min(job.decoder.remaining, REPLY_HEADROOM), self.kv.row_tokens)
        if self.budget_tokens is not None:
            fits, released = self.make_room(active, best, job.reserve)
            self.stats["released_rows"] += released
            if not fits:
                return None
        return Admission(job, best, reuse)

    def make_room(self, active: int, best: int, need: int) -> tuple[bool, int]:
        """Whether the KV rows' memory (``kv.touched``: positions written per row) stays within ``budget_tokens``
        with row ``best`` holding ``need`` positions, and how many idle rows were given back for it. The running rows
        (``rows[:active]``) count what they were admitted with (``job.reserve``) or what they wrote, if more. Idle
        rows' memory is given back (their cached prefixes lost), least recently used first, until it fits; where
        giving back every idle row would not be enough, nothing is released and the answer is False (wait for a
        running row to end), unless none runs (a request within one row always goes in: the budget is at least one
        whole row)."""
        kv, rows = self.kv, self.rows

        def held() -> int:
            running = sum(max(kv.touched[i], rows[i].job.reserve) for i in range(active))
            idle = sum(kv.touched[i] for i in range(active, len(rows)) if i != best)
            return running + idle + max(kv.touched[best], need)

        spare = sorted((i for i in range(active, len(rows)) if i != best and kv.touched[i]), key=lambda i: rows[i].used)
        if active and held() - sum(kv.touched[i] for i in spare) > self.budget_tokens:
            return False, 0  # giving back every idle row would not be enough: keep their prefixes and wait
        released = 0
        while held() > self.budget_tokens and spare:
            row = spare.pop(0)
            kv.release(row)
            rows[row].tokens, rows[row].exact = [], 0
            released += 1
        return True, released
