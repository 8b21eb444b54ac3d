"""The scheduler without a model: who waits, who gets which KV row, when, and what is given back for it.

A stand-in for :class:`~chatpack.engine.kv_rows.KvRows` exposes only what the scheduler reads (positions written per
row, a row's length) and records what it does (releasing an idle row's memory); rows and jobs are set up as the batch
leaves them. The real-model side (prefix reuse replying as a cold run, admission under a budget with a real batch,
cancelling) is in tests/test_batch_loop.py.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from chatpack.engine.chat_engine import ContextOverflow, OnnxChatEngine
from chatpack.engine.detokenizer import StreamState
from chatpack.engine.prompt_passes import Row
from chatpack.engine.scheduler import END, REPLY_HEADROOM, FairLock, Job, Scheduler
from chatpack.protocol.chat_request import GenerationOptions


class FakeKv:
    """What the scheduler reads of the KV rows (``touched``, ``row_tokens``) and calls (``release``)."""

    def __init__(self, touched: list[int], row_tokens: int = 1024):
        self.touched, self.row_tokens, self.released = list(touched), row_tokens, []

    def release(self, row: int) -> None:
        self.touched[row] = 0
        self.released.append(row)


def job(prompt: list[int], max_tokens: int = 6, thread: int = 1) -> Job:
    decoder = SimpleNamespace(remaining=max_tokens, state=StreamState(len(prompt)))  # what is read of a RowDecoder
    return Job(list(prompt), decoder, None, StreamState(len(prompt)), thread=thread)


def running(reserve: int, thread: int = 1) -> Job:
    """A job decoding in a row, admitted with room for ``reserve`` positions."""
    admitted = job([1, 2], thread=thread)
    admitted.reserve = reserve
    return admitted


def scheduler(rows: list[Row], touched: list[int] | None = None, capacity: int | None = None, reuse: bool = True,
              budget: int | None = None, row_tokens: int = 1024) -> Scheduler:
    kv = FakeKv(touched if touched is not None else [len(r.tokens) for r in rows], row_tokens)
    return Scheduler(kv, rows, len(rows) if capacity is None else capacity, reuse, budget)


def start(s: Scheduler, admitted, active: int) -> int:
    """What the batch does with an admission, without a model: the row moves to the end of the active region (its
    written positions with it) and holds the prompt. Returns the new number of active rows."""
    rows, touched, a = s.rows, s.kv.touched, admitted.row
    rows[a], rows[active] = rows[active], rows[a]
    touched[a], touched[active] = touched[active], touched[a]
    row, prompt = rows[active], admitted.job.prompt_ids
    row.job, row.tokens, row.exact = admitted.job, list(prompt), len(prompt)
    touched[active] = max(touched[active], len(prompt))
    return active + 1


def idle_rows(*used: float) -> list[Row]:
    """Empty idle rows last used at ``used``."""
    return [Row(used=u) for u in used]


PREFIX = list(range(100, 150))


# -- the line ---------------------------------------------------------------------------------------------------------

def test_jobs_go_in_first_come_first_served_while_a_row_is_free():
    s = scheduler(idle_rows(0, 0, 0, 0), capacity=2)
    a, b, c = (s.submit(job([i] * 10)) for i in (1, 2, 3))
    assert s.waiting == 3
    first = s.admit(0)
    assert first.job is a
    second = s.admit(start(s, first, 0))
    assert second.job is b
    assert s.admit(start(s, second, 1)) is None and s.waiting == 1  # no free row: c waits
    s.rows[1].job = None  # b ended (the last active row: it stays where it is, now idle)
    assert s.admit(1).job is c and s.admit(1) is None  # a row came free; nobody is left


def test_a_cancelled_job_leaves_the_line_with_its_end_and_the_next_goes_in():
    s = scheduler(idle_rows(0, 0))
    gone, kept = s.submit(job([1] * 10)), s.submit(job([2] * 10))
    gone.cancelled = True
    assert s.admit(0).job is kept and s.waiting == 0
    assert gone.pieces.get_nowait()[0] is END


def test_cancelling_a_thread_reaches_its_waiting_and_running_jobs_only():
    rows = idle_rows(0, 0, 0)
    rows[0].job = running(10, thread=7)
    s = scheduler(rows)
    waiting_7, waiting_8 = s.submit(job([1] * 4, thread=7)), s.submit(job([1] * 4, thread=8))
    assert s.cancel_thread(7) == 2 and rows[0].job.cancelled and waiting_7.cancelled and not waiting_8.cancelled
    assert s.cancel_thread(7) == 0  # already cancelled


def test_a_closed_line_refuses_jobs_and_hands_back_who_waited():
    s = scheduler(idle_rows(0))
    waiting = s.submit(job([1] * 4))
    s.close()
    with pytest.raises(RuntimeError, match="stopped"):
        s.submit(job([2] * 4))
    assert s.take_waiting() == [waiting] and s.waiting == 0


# -- when -------------------------------------------------------------------------------------------------------------

def test_the_loop_sleeps_until_there_is_work_and_settles_only_when_nothing_waits_or_runs():
    s = scheduler(idle_rows(0, 0))
    assert s.idle(0) and not s.idle(1)
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (s.wait_for_work(0), woke.set()), daemon=True)
    waiter.start()
    time.sleep(0.1)
    assert not woke.is_set()  # nothing to do: it waits
    s.submit(job([1] * 4))
    assert woke.wait(5) and not s.idle(0)
    s.take_waiting()
    s.wait_for_work(1)  # a row runs: no wait
    s.rows[1].tokens, s.rows[1].exact = [1] * 10, 4  # an idle row's reply a prompt pass has not computed
    s.wait_for_work(0)
    assert s.idle(0)  # the turn settles it
    s.close()
    s.rows[1].exact = 10
    s.wait_for_work(0)  # closed: no wait either


# -- which row ----------------------------------------------------------------------------------------------------

def test_a_prompt_gets_the_idle_row_holding_its_longest_prefix_computed_by_a_prompt_pass():
    rows = [Row(PREFIX[:20], 20, used=5), Row(PREFIX + [7, 8], 50, used=1), Row(PREFIX, 10, used=9), Row(used=0)]
    s = scheduler(rows)
    s.submit(job(PREFIX + [1, 2, 3]))
    admitted = s.admit(0)
    assert (admitted.row, admitted.reuse) == (1, 50)  # row 2 holds the prefix too, but decoded past its 10th token
    s.submit(job(PREFIX))  # the whole prompt is cached: its last two tokens are recomputed, in a prompt pass
    admitted = s.admit(0)
    assert (admitted.row, admitted.reuse) == (1, 48)


def test_a_row_that_is_decoding_is_never_reused():
    rows = [Row(PREFIX, 50, job=running(60)), Row([9] * 30, 30, used=2), Row(used=1)]
    s = scheduler(rows)
    s.submit(job(PREFIX + [1, 2]))
    admitted = s.admit(1)
    assert (admitted.row, admitted.reuse) == (2, 0)


def test_without_a_shared_prefix_the_least_recently_used_row_goes_and_the_others_keep_their_caches():
    rows = [Row([5] * 30, 30, used=3), Row([6] * 30, 30, used=1), Row([7] * 30, 30, used=2)]
    s = scheduler(rows)
    s.submit(job(PREFIX))
    assert (s.admit(0).row, s.admit(0)) == (1, None)
    off = scheduler([Row(PREFIX, 50, used=3), Row(used=1)], reuse=False)  # a model whose prefixes are not reused
    off.submit(job(PREFIX + [1, 2]))
    admitted = off.admit(0)
    assert (admitted.row, admitted.reuse) == (1, 0)


# -- the KV budget ----------------------------------------------------------------------------------------------------

def test_a_job_is_admitted_with_room_for_its_first_reply_tokens_within_its_row():
    for max_tokens, row_tokens, reserve in ((6, 1024, 106), (1000, 1024, 100 + REPLY_HEADROOM), (1000, 300, 300)):
        s = scheduler(idle_rows(0), row_tokens=row_tokens, budget=10_000)
        admitted = s.submit(job([1] * 100, max_tokens))
        assert s.admit(0).job is admitted and admitted.reserve == reserve


def test_idle_rows_are_given_back_least_recently_used_first_before_a_request_waits():
    rows = [Row([1] * 100, 100, job=running(256)), Row([2] * 300, 300, used=1), Row([3] * 100, 100, used=2),
            Row(used=0)]
    s = scheduler(rows, budget=600)
    new = s.submit(job([4] * 200, max_tokens=6))  # 206 positions
    admitted = s.admit(1)  # 256 running + 300 + 100 idle + 206 > 600: the least recently used idle row goes
    assert admitted.job is new and admitted.row == 3
    assert s.kv.released == [1] and rows[1].tokens == [] and rows[2].tokens == [3] * 100  # only as much as needed
    assert s.stats == {"waited_for_memory": 0, "released_rows": 1}


def test_a_request_waits_first_in_line_while_running_rows_hold_the_budget_and_goes_in_when_one_ends():
    rows = [Row([1] * 50, 50, job=running(250)), Row([2] * 50, 50, job=running(250)), Row([3] * 100, 100, used=1),
            Row(used=0)]
    s = scheduler(rows, budget=600)
    big, small = s.submit(job([4] * 200, max_tokens=6)), s.submit(job([5] * 10, max_tokens=2))
    for _ in range(2):
        assert s.admit(2) is None  # 500 running + 206 > 600, whatever idle memory is given back
    assert s.kv.released == [] and rows[2].tokens == [3] * 100  # nothing given back for nothing
    assert s.waiting == 2 and big.waited and not small.waited  # the small one, which would fit, does not overtake
    assert s.stats["waited_for_memory"] == 1  # counted once per job
    rows[1].job, rows[1].used = None, 3  # a running row ends (the last active one: now the first idle one)
    admitted = s.admit(1)  # 250 running + 50 + 100 idle + 206 > 600: the least recently used idle row goes
    assert admitted.job is big and admitted.row == 3 and s.kv.released == [2]
    admitted = s.admit(start(s, admitted, 1))  # 250 + 206 running + 50 idle + 12 fit
    assert admitted.job is small and s.kv.released == [2] and s.waiting == 0


def test_with_nothing_running_a_request_within_one_row_always_goes_in():
    rows = [Row([1] * 300, 300, used=1), Row([2] * 50, 50, used=2), Row(used=0)]
    s = scheduler(rows, budget=100)  # less than the request's 206 positions
    s.submit(job([3] * 200))
    assert s.admit(0).row == 2 and sorted(s.kv.released) == [0, 1]


def test_a_failing_admission_ends_only_that_job():
    s = scheduler(idle_rows(0, 0))
    broken, fine = s.submit(job([1] * 10)), s.submit(job([2] * 10))
    broken.decoder = SimpleNamespace(state=broken.decoder.state)  # no token budget to read: placing it raises
    assert s.admit(0).job is fine
    assert broken.pieces.get_nowait()[0] is END and isinstance(broken.error, AttributeError)


# -- which requests reach the batch ----------------------------------------------------------------------------------

def test_a_request_that_does_not_fit_a_row_runs_alone_and_one_beyond_the_context_is_refused():
    engine = OnnxChatEngine.__new__(OnnxChatEngine)  # the routing only: a context and KV rows, no model
    engine.defaults, engine.context_length, engine.kv = {}, 2048, FakeKv([0] * 8, row_tokens=512)

    def route(prompt: int, max_tokens: int | None) -> tuple[int, bool]:
        item = engine._pending([1] * prompt, GenerationOptions(max_tokens=max_tokens))
        return item.max_new, engine._batched(item)

    assert route(100, 50) == (50, True)
    assert route(500, 50) == (50, False)  # 550 positions: the generator, alone
    assert route(100, None) == (412, True)  # an open-ended reply ends with its row
    assert route(600, None) == (1448, False)  # a prompt longer than a row: the rest of the context, alone
    assert route(2000, 100) == (48, False)  # max_tokens is cut to the context
    with pytest.raises(ContextOverflow):
        route(2048, 1)


# -- the model lock ---------------------------------------------------------------------------------------------------

def test_the_model_lock_is_granted_in_arrival_order():
    lock, order = FairLock(), []

    def take(i: int) -> None:
        with lock:
            order.append(i)

    with lock:
        threads = []
        for i in range(6):
            threads.append(threading.Thread(target=take, args=(i,)))
            threads[-1].start()
            time.sleep(0.02)  # each one asks after the previous one
        assert lock.locked() and not lock.acquire(blocking=False)
    for thread in threads:
        thread.join(timeout=10)
    assert order == list(range(6)) and not lock.locked()
