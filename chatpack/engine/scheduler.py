"""Who gets the model when: the model lock, the queue of waiting greedy requests, batch formation, batch stats.

The onnxruntime-genai bindings hold the GIL and are not documented as thread safe, so one generator runs at a time,
under :attr:`Scheduler.model_lock`. Greedy requests that arrive while the model is busy wait in a queue; whoever
gets the model next answers the queue's head (up to ``max_batch``) in one batched generator. Sampled and constrained
requests (a decoding constraint is set per generator, so they cannot share one), and streams, which take the lock
themselves, run one at a time. The lock is first come, first served (:class:`FairLock`): a request waits for the
generations that were there before it, never for later arrivals, so a run of constrained requests cannot starve the
queue. A failure reaches every caller of the failed group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatpack.engine.decode_step import StreamState
from chatpack.protocol.chat_request import GenerationOptions


@dataclass
class Pending:
    """One request waiting for (or in) a generator; the answering callback fills in ``text`` and ``state``."""

    prompt_ids: list[int]
    options: GenerationOptions  # already merged with the model's defaults
    max_new: int
    state: StreamState
    generator: Any = None  # made ahead, outside the model lock, when the request has a constraint to compile
    text: str = ""
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


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


Answer = Callable[[list[Pending]], None]  # answers a group in one generator (caller holds the model lock)


def form_groups(batch: list[Pending], context_length: int) -> list[list[Pending]]:
    """Split ``batch`` into generator groups: rows fit together when the padded width plus their own ``max_new``
    fits the context; the others (and a lone fitting row) run alone."""
    width = max(len(item.prompt_ids) for item in batch)
    together = [item for item in batch if width + item.max_new <= context_length]
    alone = [[item] for item in batch if width + item.max_new > context_length]
    return ([together] if len(together) > 1 else [[item] for item in together]) + alone


class Scheduler:
    """Serialises generation over one model and batches queued greedy requests (see the module docstring)."""

    def __init__(self, answer: Answer, context_length: int, max_batch: int = 8):
        self.model_lock = FairLock()  # held while the model generates; streams take it directly
        self.stats = {"batches": 0, "largest_batch": 0}  # batched generators run, and the most rows in one
        self._answer, self._context_length, self._max_batch = answer, context_length, max_batch
        self._queue_lock = threading.Lock()
        self._queue: list[Pending] = []

    @property
    def waiting(self) -> int:
        """How many requests are queued for the next batch."""
        with self._queue_lock:
            return len(self._queue)

    def submit(self, item: Pending) -> None:
        """Answer ``item`` (blocking): greedy ones through the queue, sampled and constrained ones alone; re-raise its
        failure."""
        if item.options.temperature or item.options.guidance is not None or self._max_batch <= 1:
            with self.model_lock:
                self._run([item])
        else:
            with self._queue_lock:
                self._queue.append(item)
            while not item.done.is_set():
                with self.model_lock:  # whoever gets the model answers the queue's head, ours or not
                    if not item.done.is_set():
                        with self._queue_lock:
                            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                        self._run(batch)
        if item.error is not None:
            raise item.error

    def _run(self, batch: list[Pending]) -> None:
        """Answer ``batch`` group by group (the caller holds the model lock); every caller is released."""
        for group in form_groups(batch, self._context_length):
            try:
                self._answer(group)
                if len(group) > 1:
                    self.stats["batches"] += 1
                    self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
            except Exception as exc:  # every waiting caller hears about it, none hangs
                for item in group:
                    item.error = exc
            finally:
                for item in group:
                    item.done.set()
