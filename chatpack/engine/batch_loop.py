"""Continuous batching over :class:`~chatpack.engine.kv_rows.KvRows`: every request joins the running batch.

One thread owns the rows and runs what its scheduler (:class:`~chatpack.engine.scheduler.Scheduler`: who waits, who
gets which row, when) decides. Each turn of its loop it (1) prefills the requests the scheduler admits into the rows
it gives them, each prompt after the longest prefix its row still holds from an earlier request (prefix reuse), then
(2) runs one decode step over every active row, each row choosing its own next token
(:class:`~chatpack.engine.sampler.Sampler`: greedy, or sampled with its own seed) and going through the shared
detokenizer (:class:`~chatpack.engine.detokenizer.RowDecoder`: EOS, stops, ``max_tokens``, logprobs). A constrained
row (structured output, tools) draws under its own token mask (:mod:`chatpack.engine.grammar`): the masks of a
step's constrained rows are computed together, on another thread while onnxruntime runs the step (a mask depends
only on the tokens the row has taken); the drawn token goes back to the row's matcher. Where the grammar then allows
one continuation only (JSON keys, punctuation, a tool call's envelope), the row feeds those tokens in a pass of its
own (fast-forward, up to :data:`FORCED_PER_STEP` tokens per loop turn) and takes each one it draws itself from that
pass's logits, under its mask, as it would one step at a time; a row whose grammar admits nothing but the end of the
reply ends without another step. A request running alone, greedy, may instead verify a draft copied from its own
context (prompt-lookup speculation) the same way.

Rows are kept in two regions: active rows first (a decode step runs rows ``0..active-1`` in one call), then idle
rows, which keep the KV cache of the requests they last served, most recently used first to be kept. Only what a
prompt pass computed is reused (a decode step's keys/values differ in the last bits); when nothing else is waiting,
the loop recomputes an idle row's reply tokens in prompt passes (:func:`~chatpack.engine.prompt_passes.settle`), so
that a conversation's next turn reuses the reply too. A finished request's row is swapped to the end of the active
region. A request's text goes out through its own queue as it is made; closing its stream cancels it at the next
step and frees its row. Each loop turn holds ``model_lock`` (shared with the one-request-at-a-time path).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any

import numpy as np

from chatpack.engine.grammar import FAST_FORWARD_MIN, Masker, masked
from chatpack.engine.guidance import GuidanceError
from chatpack.engine.kv_rows import KvRows
from chatpack.engine.prompt_passes import Row, draft_tokens, prefill_chunks, settle
from chatpack.engine.scheduler import END, Admission, Job, Scheduler

logger = logging.getLogger(__name__)

FORCED_PER_STEP = 16  # forced tokens a row takes per loop turn (the rest after the next step), alone or not

_LOOPS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_loops() -> None:
    for loop in list(_LOOPS):
        loop.close()


class BatchLoop:
    """The rows' owner thread (see the module docstring). ``speculate``: the longest draft a lone greedy request
    verifies per pass (0: off); ``fast_forward``: constrained rows take the tokens their grammar forces in a pass;
    ``budget_tokens``: the KV positions all rows may hold together (None: every row may fill up), which its
    :attr:`scheduler` admits requests within; ``reuse_decoded``: a later request may reuse a finished reply's
    keys/values as its decode steps computed them (llama.cpp's way: no wait for settling, but not what a cold prompt
    computes, so its reply may differ)."""

    def __init__(self, rows: KvRows, model_lock: Any, speculate: int = 0, ngram: int = 3, fast_forward: bool = True,
                 budget_tokens: int | None = None, reuse_decoded: bool = False):
        self.kv, self.model_lock, self.speculate, self.ngram = rows, model_lock, speculate, ngram
        self.fast_forward, self.reuse_decoded = fast_forward, reuse_decoded
        self.rows = [Row() for _ in range(rows.rows)]
        self.active = 0
        # What this model's kernels allow (KvRows.probe). Where a step's unpaired last row is computed differently,
        # every step runs an even number of rows (an odd one adds the next idle row, written past its cached tokens
        # only, and one row is kept free for it), so that a reply is the same alone or batched. Prefixes are reused
        # only where any split of a prompt computes the same keys and values.
        same_rows, self.reuse = rows.probe() if rows.rows > 2 else (True, rows.rows > 0)
        self.pad_odd = not same_rows
        capacity = len(self.rows) - (1 if self.pad_odd and len(self.rows) % 2 else 0)
        self.stats = {"steps": 0, "rows_stepped": 0, "largest_batch": 0, "prompt_tokens": 0, "reused_tokens": 0,
                      "settled_tokens": 0, "drafted": 0, "accepted": 0, "forced": 0, "forced_taken": 0,
                      "forced_passes": 0, "waited_for_memory": 0, "released_rows": 0}
        self.scheduler = Scheduler(rows, self.rows, capacity, self.reuse, budget_tokens, self.stats)
        self._masker = Masker()  # constrained rows' masks, beside the model's step
        self._thread = threading.Thread(target=self._loop, name="batch-loop", daemon=True)
        self._thread.start()
        _LOOPS.add(self)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a row."""
        return self.scheduler.waiting

    def submit(self, job: Job) -> Job:
        """Queue ``job`` for the next free row; read its text from ``job.results()``."""
        return self.scheduler.submit(job)

    def cancel_thread(self, thread: int) -> int:
        """Cancel every job the thread ``thread`` submitted (its client went away); their rows are freed at the next
        step and their readers get what was made so far. Returns how many were cancelled."""
        return self.scheduler.cancel_thread(thread)

    # -- the loop --------------------------------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop after its current step (waiting and active jobs end with an error). Called for every loop
        when the interpreter exits: a step still inside onnxruntime while the process tears down aborts it."""
        self.scheduler.close()
        self._thread.join(timeout)
        self._masker.close()

    def _loop(self) -> None:
        while True:
            self.scheduler.wait_for_work(self.active)
            with self.model_lock:
                if self.scheduler.closed:
                    self._shut()
                    return
                try:
                    if self.scheduler.idle(self.active):  # nothing waits or runs: settle an idle row's reply
                        self.stats["settled_tokens"] += settle(self.kv, self.rows, self.active, self.reuse)
                        continue
                    self._admit()
                    self._drop_cancelled()
                    if self.active:
                        self._step()
                except Exception as exc:  # every active job hears about it; the loop goes on
                    logger.exception("decode step failed")
                    for i in reversed(range(self.active)):
                        self._fail(self.rows[i].job, exc)

    def _admit(self) -> None:
        """The jobs the scheduler admits into the rows it gives them, each prefilled after the prefix its row holds."""
        while (admitted := self.scheduler.admit(self.active)) is not None:
            try:
                self._start(admitted)
            except Exception as exc:  # the job hears about it; the loop goes on
                logger.exception("prefill failed")
                self._fail(admitted.job, exc)

    def _start(self, admitted: Admission) -> None:
        """Move the admitted job's row to the end of the active region and prefill its prompt after the prefix the
        row holds."""
        job, reuse = admitted.job, admitted.reuse
        self._swap(admitted.row, self.active)
        index, row = self.active, self.rows[self.active]
        row.job, row.tokens, row.exact, self.active = job, row.tokens[:reuse], 0, self.active + 1
        self.stats["prompt_tokens"] += len(job.prompt_ids)
        self.stats["reused_tokens"] += reuse
        job.state.cached_tokens = reuse  # set before the reader hears anything of this job
        masks = self._masker.start([job])  # the first token's mask, computed while the prompt is
        logits = None
        for start, end in prefill_chunks(reuse, len(job.prompt_ids)):
            chunk = job.prompt_ids[start:end]
            logits = self.kv.run(index, np.asarray([chunk]), [start])[0, -1]
            row.tokens.extend(chunk)
        row.exact = len(row.tokens)
        masks.deliver()
        if self._take(index, logits) is not None:
            self._fast_forward(index)

    def _step(self) -> None:
        """One decode step over every active row (or a speculative pass for a lone greedy request), then a pass of
        its own for each constrained row whose grammar now forces tokens (fast-forward)."""
        count = self.active
        job = self.rows[0].job
        if count == 1 and self.speculate and not self.scheduler.waiting and job.sampler.greedy and job.matcher is None:
            room = min(self.kv.row_tokens - len(self.rows[0].tokens) - 1, job.decoder.remaining - 1)
            draft = draft_tokens(self.rows[0].tokens + [job.next_token], self.ngram, min(self.speculate, room))
            if draft and job.decoder.track is None:
                self.stats["drafted"] += len(draft)
                self.stats["accepted"] += self._draft_pass(0, draft)
                return
        jobs = [self.rows[i].job for i in range(count)]
        ids = [[job.next_token] for job in jobs]
        lengths = [len(self.rows[i].tokens) for i in range(count)]
        if count % 2 and self.pad_odd and len(self.rows[count].tokens) < self.kv.row_tokens:
            ids, lengths = ids + [[0]], lengths + [len(self.rows[count].tokens)]  # past its cached tokens only
        masks = self._masker.start(jobs)  # computed while onnxruntime runs the step
        logits = self.kv.run(0, np.asarray(ids), lengths)
        masks.deliver()
        self.stats["steps"] += 1
        self.stats["rows_stepped"] += count
        self.stats["largest_batch"] = max(self.stats["largest_batch"], count)
        for i in range(count):
            self.rows[i].tokens.append(self.rows[i].job.next_token)
        for i in reversed(range(count)):  # releasing row i moves only rows after it
            if self._take(i, logits[i, 0]) is not None:
                self._fast_forward(i)

    def _fast_forward(self, index: int) -> None:
        """Take the tokens row ``index``'s grammar forces after its next one in passes of their own, at most
        :data:`FORCED_PER_STEP` per loop turn: a reply its grammar mostly forces (deeply nested keys) shares the batch
        instead of holding it. The split depends on the row's own tokens only, never on the load, so that its reply
        is the same alone and in any batch."""
        job, budget = self.rows[index].job, FORCED_PER_STEP
        while self.rows[index].job is job and job.forced and budget >= FAST_FORWARD_MIN:
            draft = job.forced[:budget]
            budget -= len(draft)
            self.stats["forced"] += len(draft)
            self.stats["forced_passes"] += 1
            self.stats["forced_taken"] += self._draft_pass(index, draft)

    def _draft_pass(self, index: int, draft: list[int]) -> int:
        """Feed row ``index``'s next token and ``draft`` (tokens expected after it) in one pass, and take each draft
        token the row draws itself from that pass's logits (under its mask), as one step at a time would; the first
        token it draws otherwise, or the one after the draft, becomes its next token. Returns the draft tokens taken.
        """
        row, job = self.rows[index], self.rows[index].job
        logits = self.kv.run(index, np.asarray([[job.next_token] + draft]), [len(row.tokens)], every_position=True)
        row.tokens.append(job.next_token)
        for position in range(len(draft) + 1):
            if job.matcher is not None:
                job.allowed = job.matcher.allowed()
            token = self._take(index, logits[0, position])
            if token is None or position == len(draft) or token != draft[position]:
                return position  # the last token drawn is the row's next one (its keys/values not cached yet)
            row.tokens.append(token)  # a draft token the row drew: this pass wrote its keys/values
        return len(draft)

    def _take(self, index: int, logits: np.ndarray) -> int | None:
        """Row ``index``'s next token from ``logits`` (under its mask when constrained); None when the reply has ended
        (its row released)."""
        job = self.rows[index].job
        token = job.sampler.choose(logits if job.matcher is None else masked(logits, job.allowed))
        return token if self._push(index, token, logits) else None

    def _push(self, index: int, token: int, logits: np.ndarray) -> bool:
        """Give ``token`` to row ``index``'s reply (and to its matcher, noting the tokens it forces next); True while
        the reply goes on."""
        job = self.rows[index].job
        job.next_token = token
        if job.matcher is not None:
            try:
                job.matcher.consume(token)
            except GuidanceError as exc:  # cannot happen under its mask; if it does, only this reply fails
                self._fail(job, exc)
                return False
        piece = job.decoder.push(token, logits if job.decoder.track is not None else None)
        if job.matcher is not None and job.matcher.finished:
            piece += job.decoder.finish("stop")  # only EOS is left: the step that would draw it is not needed
        ended = job.decoder.done or len(self.rows[index].tokens) >= self.kv.row_tokens
        if ended:
            piece += job.decoder.finish("length")
        if piece:
            job.put(piece)
        if ended:
            self._release(index)
            return False
        if job.matcher is not None and self.fast_forward:
            job.forced = job.matcher.forced(min(self.kv.row_tokens - len(self.rows[index].tokens) - 1,
                                                job.decoder.remaining))
        return True

    def _drop_cancelled(self) -> None:
        for i in reversed(range(self.active)):
            if self.rows[i].job.cancelled:
                self._release(i)

    def _shut(self) -> None:
        closed = RuntimeError("the model's batch loop has stopped (the process is exiting)")
        for job in self.scheduler.take_waiting() + [self.rows[i].job for i in reversed(range(self.active))]:
            self._fail(job, closed)

    def _fail(self, job: Job, exc: BaseException) -> None:
        """End ``job`` with ``exc`` (raised to its reader), freeing its row if it has one."""
        job.error = exc
        held = [i for i in range(self.active) if self.rows[i].job is job]
        if held:
            self.rows[held[0]].tokens, self.rows[held[0]].exact = [], 0  # its cache may be half written
            self._release(held[0])
        else:
            job.put(END)

    def _release(self, index: int) -> None:
        """End row ``index``'s job and move the row to the idle region (its cache kept for reuse)."""
        row = self.rows[index]
        job, row.job, row.used = row.job, None, time.monotonic()
        if self.reuse_decoded and self.reuse:
            row.exact = len(row.tokens)  # reusable as decoded, not settled (inexact: an opt-in)
        self.active -= 1
        self._swap(index, self.active)
        job.put(END)

    def _swap(self, a: int, b: int) -> None:
        if a != b:
            self.kv.swap_rows(a, len(self.rows[a].tokens), b, len(self.rows[b].tokens))
            self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
