"""The onnxruntime-genai engine: queued greedy requests answered in one batch give the replies they get alone."""

from __future__ import annotations

import threading
import time

import pytest

from chatpack.engine.chat_engine import OnnxChatEngine
from chatpack.engine.stops import held_back
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.sources.fetch import fetched_model


@pytest.fixture(scope="module")
def engine(fixture_fetch_run) -> OnnxChatEngine:
    return OnnxChatEngine(fetched_model(fixture_fetch_run).onnx_dir)


def test_queued_requests_are_batched_and_match_their_solo_replies(engine):
    prompts = [engine.encode_chat([{"role": "user", "content": text}])
               for text in ("Hi", "What is two plus two?", "Hello, how are you today? Tell me.", "Paris", "x" * 40)]
    options = [GenerationOptions(max_tokens=n) for n in (4, 12, 7, 20, 9)]
    solo = [engine.complete(p, o) for p, o in zip(prompts, options)]
    stop = solo[3].text[3:6]
    options[3] = GenerationOptions(max_tokens=20, stop=(stop,))
    solo[3] = engine.complete(prompts[3], options[3])
    assert solo[3].finish_reason == "stop"
    before = engine.stats["batches"]
    results: dict[int, object] = {}
    with engine._lock:  # the model is busy: every request below has to queue
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, engine.complete(prompts[i], options[i])))
                   for i in range(len(prompts))]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while len(engine._queue) < len(prompts) and time.time() < deadline:
            time.sleep(0.01)
        assert len(engine._queue) == len(prompts)
    for t in threads:
        t.join(timeout=60)
    assert engine.stats["batches"] == before + 1 and engine.stats["largest_batch"] == len(prompts)
    assert [results[i] for i in range(len(prompts))] == solo


def test_sampled_requests_bypass_the_batch_and_stay_repeatable_with_a_seed(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hi"}])
    first = engine.complete(ids, GenerationOptions(max_tokens=8, temperature=1.0, seed=3))
    assert first == engine.complete(ids, GenerationOptions(max_tokens=8, temperature=1.0, seed=3))


def test_held_back_text_is_the_longest_possible_start_of_a_stop_sequence():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("xyz",)) == 0
    assert held_back("ab", ("abc", "b")) == 2
