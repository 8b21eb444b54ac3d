"""The continuous batch on the tiny fixture model: joining a running batch, prefix reuse, per-row seeded sampling,
prompt-lookup speculation, and the KV rows' layout."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from chatpack.engine.chat_engine import OnnxChatEngine
from chatpack.engine.memory import row_layout
from chatpack.engine.prompt_passes import draft_tokens, prefill_chunks
from chatpack.engine.sampler import Sampler
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.sources.fetch import fetched_model
from tests.helpers import chat, queued


@pytest.fixture(scope="module")
def onnx_dir(fixture_fetch_run) -> str:
    return str(fetched_model(fixture_fetch_run).onnx_dir)


@pytest.fixture(scope="module")
def engine(onnx_dir) -> OnnxChatEngine:
    return OnnxChatEngine(onnx_dir)


@pytest.fixture(scope="module")
def int8_dir(bundled_fetch_run) -> str:
    """The bundled model as main's default recipe builds it (int8, block 128): its kernels multiply rows in pairs."""
    from tests.conftest import BUNDLED_MODEL, run_fetch

    run = run_fetch("--model", BUNDLED_MODEL, "--precision", "int8", "--block_size", "128", "--damage", "false")
    return str(fetched_model(run).onnx_dir)


@pytest.fixture(params=["int4", pytest.param("int8", marks=pytest.mark.bundled)])
def model_dir(request) -> str:
    """The fixture's int4 build, and an int8 build (whose prompt passes are computed in pairs of positions)."""
    return request.getfixturevalue("onnx_dir" if request.param == "int4" else "int8_dir")


def test_a_request_joins_a_running_batch_and_gets_its_solo_reply(engine):
    late = (chat(engine, "Paris"), GenerationOptions(max_tokens=6))
    alone = engine.complete(*late)
    steps = engine.stats["steps"]
    stream = engine.stream(chat(engine, "Tell me a long story"), GenerationOptions(max_tokens=120))
    first = next(stream)
    joined = engine.complete(*late)  # while the stream is decoding
    rest = "".join(stream)
    assert joined == alone and first and rest
    assert engine.stats["largest_batch"] >= 2
    assert engine.stats["steps"] - steps < 120 + 6  # the late request's steps were the stream's steps


def test_a_conversation_reuses_its_cached_prefix_and_replies_as_a_cold_run(model_dir):
    warm, cold = OnnxChatEngine(model_dir), OnnxChatEngine(model_dir)
    turns = [{"role": "system", "content": "You answer briefly. " * 20}, {"role": "user", "content": "Hi"}]
    options = GenerationOptions(max_tokens=12, logprobs=2)
    for question in ("What is two plus two?", "And three plus three?", "Thanks!"):
        first = warm.complete(warm.encode_chat(turns), options)
        turns += [{"role": "assistant", "content": first.text}, {"role": "user", "content": question}]
        reused = warm.stats["reused_tokens"]
        ids = warm.encode_chat(turns)
        again = warm.complete(ids, options)
        assert warm.stats["reused_tokens"] - reused >= len(ids) // 2  # the earlier turns were not recomputed
        fresh = OnnxChatEngine.complete(cold, ids, options)
        cold.batch.rows[:] = [type(row)() for row in cold.batch.rows]  # keep the cold engine cold
        assert again.cached_tokens >= len(ids) // 2 and fresh.cached_tokens == 0  # usage reports the reuse
        assert again == fresh  # text, counts and every logprob
        turns = turns[:-1] + [{"role": "user", "content": question}]
    assert cold.stats["reused_tokens"] == 0


def test_a_reply_settled_while_idle_is_reused_by_the_next_turn_exactly(model_dir):
    warm, cold = OnnxChatEngine(model_dir), OnnxChatEngine(model_dir)
    turns = [{"role": "user", "content": "Tell me about the sea."}]
    options = GenerationOptions(max_tokens=40)
    first = warm.complete(warm.encode_chat(turns), options)
    deadline = time.time() + 30
    while warm.stats["settled_tokens"] < first.completion_tokens - 2 and time.time() < deadline:
        time.sleep(0.01)  # the user reads the reply; the loop recomputes it meanwhile
    assert warm.stats["settled_tokens"] >= first.completion_tokens - 2
    turns += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And the mountains?"}]
    ids, reused = warm.encode_chat(turns), warm.stats["reused_tokens"]
    again = warm.complete(ids, options)
    assert warm.stats["reused_tokens"] - reused >= len(warm.encode_chat(turns[:1])) + first.completion_tokens // 2
    assert again.cached_tokens == warm.stats["reused_tokens"] - reused
    assert again == cold.complete(ids, options)


def test_reuse_decoded_lets_the_next_turn_at_once_reuse_the_reply_as_decoded(onnx_dir):
    inexact = OnnxChatEngine(onnx_dir, reuse_decoded=True)
    turns = [{"role": "user", "content": "Tell me about the sea."}]
    options = GenerationOptions(max_tokens=40)
    first = inexact.complete(inexact.encode_chat(turns), options)
    turns += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And the mountains?"}]
    ids, reused = inexact.encode_chat(turns), inexact.stats["reused_tokens"]
    inexact.complete(ids, options)
    assert inexact.stats["settled_tokens"] == 0  # it never needed to recompute the reply
    assert inexact.stats["reused_tokens"] - reused >= len(inexact.encode_chat(turns[:1])) + first.completion_tokens - 2


def test_reuse_never_takes_a_row_that_is_decoding(engine):
    ids = chat(engine, "A shared question " * 10)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(engine.complete(ids, GenerationOptions(max_tokens=20))))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 3 and results[0] == results[1] == results[2]


def test_seeded_sampling_in_a_batch_draws_what_it_draws_alone(engine):
    requests = [(chat(engine, "Hi"), GenerationOptions(max_tokens=12, temperature=0.9, seed=11)),
                (chat(engine, "Hi"), GenerationOptions(max_tokens=12, temperature=0.9, seed=12)),
                (chat(engine, "Paris"), GenerationOptions(max_tokens=9)),
                (chat(engine, "x"), GenerationOptions(max_tokens=10, temperature=1.3, top_p=0.8, top_k=20, seed=3))]
    alone = [engine.complete(*r) for r in requests]
    assert queued(engine, requests) == alone
    assert alone[0].text != alone[1].text  # two seeds, two samples


def test_prompt_lookup_speculation_takes_drafted_tokens_and_repeats_itself(onnx_dir):
    engine = OnnxChatEngine(onnx_dir, speculate=4)
    ids = engine.encode_text("one two three four five six seven eight " * 6)
    first = engine.complete(ids, GenerationOptions(max_tokens=40))
    assert engine.stats["drafted"] > 0
    assert engine.complete(ids, GenerationOptions(max_tokens=40)) == first
    assert first.completion_tokens == 40 and first.finish_reason == "length"
    sampled = engine.stats["drafted"]
    engine.complete(ids, GenerationOptions(max_tokens=10, temperature=0.7, seed=1))  # sampled: never speculates
    assert engine.stats["drafted"] == sampled


def test_draft_tokens_follow_the_latest_earlier_occurrence_of_the_last_ngram():
    history = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert draft_tokens(history, 3, 4) == [7, 8, 1, 2]
    assert draft_tokens(history, 3, 1) == [7]
    assert draft_tokens([5, 6, 7], 3, 4) == [] and draft_tokens([1, 2, 3, 4], 2, 4) == []
    assert draft_tokens(history, 3, 0) == []


def test_prefill_never_runs_one_token_after_a_past_nor_128k_plus_one_tokens():
    assert prefill_chunks(0, 600, 256) == [(0, 256), (256, 512), (512, 600)]
    assert prefill_chunks(0, 513, 256) == [(0, 256), (256, 511), (511, 513)]
    assert prefill_chunks(0, 1, 256) == [(0, 1)]  # a one-token prompt with no past is a prompt pass
    assert prefill_chunks(100, 102, 256) == [(100, 102)]
    assert prefill_chunks(282, 411, 256) == [(282, 409), (409, 411)]  # 129 tokens: 127 + 2
    assert prefill_chunks(0, 129, 256) == [(0, 127), (127, 129)]
    for start in range(0, 40, 3):
        for end in range(start + 2, 700, 7):
            chunks = prefill_chunks(start, end, 256)
            assert chunks[0][0] == start and chunks[-1][1] == end
            assert all(b - a >= 2 or a == 0 for a, b in chunks) and all((b - a) % 128 != 1 or b - a == 1
                                                                         for a, b in chunks)


@pytest.mark.bundled
@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_on_the_bundled_model_any_split_of_a_prompt_gives_the_same_keys_values_and_logits(precision, request):
    from chatpack.engine.kv_rows import KvRows

    model_dir = fetched_model(request.getfixturevalue("bundled_fetch_run")).onnx_dir if precision == "int4" else \
        request.getfixturevalue("int8_dir")
    rows = KvRows(model_dir, 3, 1024, threads=2)
    # int8 multiplies rows in pairs: its steps need an even number of rows and its passes an even number of positions
    int8 = precision == "int8"
    assert rows.probe() == ((False, True) if int8 else (True, True)) and rows.paired == int8
    prompt = np.random.default_rng(7).integers(100, 40000, 650)

    def prefill(cuts: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        for a, b in [chunk for x, y in zip([0, *cuts], [*cuts, 650]) for chunk in prefill_chunks(x, y)]:
            logits = rows.run(0, prompt[None, a:b], [a])[0, -1].copy()
        return logits, [cache[0, :, :650].copy() for cache in rows._cache[-2:]]

    cold = prefill([])
    for cuts in ([282], [200, 329], [26, 282], [384], [1, 500], [128, 257, 386]):  # 129-token passes among them
        warm = prefill(cuts)
        assert np.array_equal(warm[0], cold[0]), cuts
        assert all(np.array_equal(a, b) for a, b in zip(warm[1], cold[1])), cuts


def test_the_sampler_is_greedy_without_temperature_and_keeps_to_top_k_and_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert Sampler(GenerationOptions()).choose(logits) == 0
    draws = [Sampler(GenerationOptions(temperature=1.0, top_k=2, seed=s)).choose(logits) for s in range(200)]
    assert set(draws) == {0, 1}
    draws = [Sampler(GenerationOptions(temperature=1.0, top_p=0.5, seed=s)).choose(logits) for s in range(50)]
    assert set(draws) == {0}
    same = Sampler(GenerationOptions(temperature=1.0, seed=7)), Sampler(GenerationOptions(temperature=1.0, seed=7))
    assert [same[0].choose(logits) for _ in range(20)] == [same[1].choose(logits) for _ in range(20)]


def test_rows_span_the_whole_context_when_the_budget_holds_one_such_row():
    small = 46_080  # the bundled model's KV bytes per token
    assert row_layout(8, 8192, small, 2048 * 2**20) == (8, 8192)  # address space; the batch keeps to the budget
    big = 786_432  # Phi-3-mini's (32 layers x 32 KV heads x 96 x fp32 x 2): 3 GiB a 4,096-token row
    assert row_layout(8, 4096, big, 4096 * big) == (8, 4096)
    rows, tokens = row_layout(8, 4096, big, 2048 * 2**20)  # below one whole row: the old fixed layout
    assert rows * tokens * big <= 2048 * 2**20 and tokens >= 1024 and rows == 2


def test_the_default_kv_budget_is_a_share_of_the_machines_memory_within_one_to_all_rows(monkeypatch):
    from chatpack.engine import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 2**30)
    row = 4096 * 786_432
    assert memory.kv_budget_bytes(None, 8, row)[0] == 8 * 2**30  # half of 16 GiB: 2.7 whole Phi-3-mini rows
    assert "16.0 GiB available" in memory.kv_budget_bytes(None, 8, row)[1]
    assert memory.kv_budget_bytes(None, 2, row)[0] == 2 * row  # no more than every row needs
    monkeypatch.setattr(memory, "available_memory", lambda: 2**30)
    assert memory.kv_budget_bytes(None, 8, row)[0] == row  # no less than one whole row
    assert memory.kv_budget_bytes(512, 8, row) == (512 * 2**20, "kv_cache_mb=512")


def test_a_request_as_long_as_the_context_joins_the_batch_by_default(onnx_dir):
    engine = OnnxChatEngine(onnx_dir)
    assert engine.kv.row_tokens == engine.context_length and engine.kv.rows == 8
    prompt = engine.encode_text("word " * 800)[: engine.context_length - 8]
    reply = engine.complete(prompt, GenerationOptions(max_tokens=4))
    assert reply.completion_tokens == 4 and engine.stats["prompt_tokens"] >= len(prompt)
    assert not engine.genai.loaded  # nothing needed onnxruntime-genai's generator


def test_admission_keeps_the_kv_memory_within_its_budget_and_gives_idle_rows_back(onnx_dir):
    long_prompt_budget = 600  # tokens; rows of the whole context are address space far beyond it
    engine = OnnxChatEngine(onnx_dir, kv_cache_mb=1)
    engine.batch.scheduler.budget_tokens = long_prompt_budget
    prompts = [engine.encode_text(f"{i} " + "word " * 300)[:250] for i in range(3)]
    alone = [engine.complete(p, GenerationOptions(max_tokens=6)) for p in prompts]
    assert engine.kv.resident_tokens <= long_prompt_budget  # the third gave back an idle row to go in
    assert engine.stats["released_rows"] >= 1
    # Together: two fit (250 + 6 each, with the headroom capped by max_tokens), the third waits for one to end.
    with ThreadPoolExecutor(3) as pool:
        with engine.model_lock:  # all three are in line before the loop admits any
            futures = [pool.submit(engine.complete, p, GenerationOptions(max_tokens=6)) for p in prompts]
            deadline = time.time() + 20
            while engine.batch.waiting < 3 and time.time() < deadline:
                time.sleep(0.01)
        together = [f.result(timeout=120) for f in futures]
    assert together == alone
    assert engine.stats["waited_for_memory"] >= 1 and engine.stats["largest_batch"] <= 2
    assert engine.kv.resident_tokens <= long_prompt_budget


def test_kv_memory_grows_with_the_tokens_held_not_the_budget(onnx_dir):
    engine = OnnxChatEngine(onnx_dir, kv_cache_mb=4096)

    def rss() -> int:
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    before = rss()
    engine.complete(chat(engine, "Hi"), GenerationOptions(max_tokens=8))
    time.sleep(0.1)
    assert rss() - before < 0.25 * engine.kv.cache_bytes


def test_cancelling_a_thread_frees_the_rows_of_what_it_submitted(engine):
    done: dict = {}

    def ask() -> None:
        done["thread"] = threading.get_ident()
        done["reply"] = engine.complete(chat(engine, "Tell me a long story"), GenerationOptions(max_tokens=400))

    with engine.model_lock:  # it waits for a row until cancelled
        caller = threading.Thread(target=ask)
        caller.start()
        deadline = time.time() + 20
        while engine.batch.waiting < 1 and time.time() < deadline:
            time.sleep(0.01)
        assert engine.batch.cancel_thread(done["thread"]) == 1
        assert engine.batch.cancel_thread(threading.get_ident()) == 0  # nothing of this thread's
    caller.join(timeout=30)
    assert not caller.is_alive() and done["reply"].completion_tokens == 0 and engine.batch.active == 0


@pytest.mark.bundled
def test_an_int8_model_decodes_in_even_steps_with_the_same_replies_alone_and_batched(int8_dir):
    engine = OnnxChatEngine(int8_dir)
    # what the probe finds for the builder's int8 kernels: steps of an even number of rows, passes of an even
    # number of positions, and then prefixes may be reused
    assert engine.batch.pad_odd and engine.kv.paired and engine.batch.reuse
    requests = [(chat(engine, text), GenerationOptions(max_tokens=40))
                for text in ("Name a color.", "Why is the sky blue?", "List three fruits.")]
    alone = [engine.complete(*r) for r in requests]
    assert queued(engine, requests) == alone and queued(engine, requests[:2]) == alone[:2]
