"""One request in the continuous batch (:mod:`chatpack.engine.batch_loop`): its decoder, sampler and (constrained)
matcher, and the queue its text goes out through while the loop runs ahead of its reader."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from chatpack.engine.decode_step import RowDecoder, StreamState
from chatpack.engine.grammar import RowMatcher
from chatpack.engine.sampler import Sampler

END = object()  # the end of a job's pieces
# The thread a job counts as submitted by, when not the one that submits it (a model answering a request's rows from
# a pool of its own sets the request's thread here, so that cancelling that thread reaches them).
OWNER: contextvars.ContextVar[int | None] = contextvars.ContextVar("chatpack_job_owner", default=None)


@dataclass
class Job:
    """One request in (or waiting for) a row. Its decoder fills in its own :class:`StreamState` as the loop runs
    ahead; ``state`` (the caller's) is brought up to each piece as the reader takes it, so that after a piece it
    holds that piece's counts and logprob entries, no later ones."""

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
    thread: int = field(default_factory=lambda: OWNER.get() or threading.get_ident())  # see BatchLoop.cancel_thread
    reserve: int = 0  # the KV positions it was admitted with (prompt + the first reply tokens)
    waited: bool = False  # whether it ever waited for KV memory

    def put(self, piece: object) -> None:
        """Hand ``piece`` (text, or :data:`END`) to the reader with the decoder's state as of now."""
        made = self.decoder.state
        self.pieces.put((piece, made.completion_tokens, made.finish_reason, len(made.logprobs or ())))

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
