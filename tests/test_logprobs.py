"""Logprobs in the engine, on the tiny fixture model: the maths of the reported distribution (the model's own
log-softmax, before temperature and constraints), alignment with the reply text (also streamed and with stop
sequences), unchanged replies, and batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chatpack.engine.chat_engine import OnnxChatEngine, StreamState
from chatpack.engine.logprobs import log_softmax, top_k
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.protocol.replies import chat_logprobs, legacy_logprobs
from chatpack.protocol.reply_format import Guidance
from chatpack.sources.fetch import fetched_model
from tests.helpers import chat, queued, streamed


@pytest.fixture(scope="module")
def engine(fixture_fetch_run) -> OnnxChatEngine:
    return OnnxChatEngine(fetched_model(fixture_fetch_run).onnx_dir)


def test_log_softmax_of_a_step_is_a_distribution_and_top_k_is_sorted():
    logits = np.random.default_rng(0).normal(size=32_000).astype(np.float32) * 8
    logprobs = log_softmax(logits)
    assert math.isclose(np.exp(logprobs).sum(), 1.0, rel_tol=1e-9)
    best = top_k(logprobs, 20)
    assert [lp for _, lp in best] == sorted((lp for _, lp in best), reverse=True)
    assert best[0][0] == int(np.argmax(logits)) and all(lp <= 0 for _, lp in best)
    assert top_k(logprobs, 0) == []


def test_greedy_tokens_are_the_most_likely_of_their_step_and_join_to_the_reply(engine):
    ids = chat(engine, "Hello")
    plain = engine.complete(ids, GenerationOptions(max_tokens=20))
    reply = engine.complete(ids, GenerationOptions(max_tokens=20, logprobs=5))
    assert reply.text == plain.text and plain.logprobs is None
    assert len(reply.logprobs) == reply.completion_tokens == 20
    assert "".join(e.token for e in reply.logprobs) == reply.text
    for entry in reply.logprobs:
        values = [lp for _, lp in entry.top]
        assert len(values) == 5 and values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry.logprob == pytest.approx(values[0])
    body = chat_logprobs(reply.logprobs)
    assert body["refusal"] is None
    assert all(bytes(c["bytes"]).decode() == c["token"] for c in body["content"])
    legacy = legacy_logprobs(reply.logprobs)
    assert legacy["text_offset"][0] == 0 and legacy["tokens"] == [e.token for e in reply.logprobs]


def test_logprobs_are_the_models_own_before_temperature_and_constraints(engine):
    """A sampled or constrained reply reports the raw distribution: the step's best alternative is the greedy choice,
    whatever was picked."""
    ids = chat(engine, "Hello")
    greedy = engine.complete(ids, GenerationOptions(max_tokens=1, logprobs=3)).logprobs[0]
    for options in (GenerationOptions(max_tokens=1, temperature=2.0, seed=3, logprobs=3),
                    GenerationOptions(max_tokens=1, logprobs=3, guidance=Guidance("regex", "[0-9]+"))):
        first = engine.complete(ids, options).logprobs[0]
        assert first.top == greedy.top
        assert first.logprob <= first.top[0][1]


def test_streamed_pieces_carry_the_entries_of_their_own_tokens(engine):
    ids = chat(engine, "Tell me a story")
    options = GenerationOptions(max_tokens=25, logprobs=2)
    state = StreamState(len(ids))
    seen, pieces = 0, []
    for piece in engine.stream(ids, options, state):
        new, seen = state.logprobs[seen:], len(state.logprobs)
        assert "".join(e.token for e in new) == piece  # text goes out with its tokens
        pieces.append(piece)
    whole = engine.complete(ids, options)
    assert "".join(pieces) == whole.text and state.logprobs == whole.logprobs


def test_a_stop_sequence_cuts_the_reported_tokens_with_the_text(engine):
    ids = chat(engine, "Hello")
    free = engine.complete(ids, GenerationOptions(max_tokens=30, logprobs=1))
    stop = free.text[len(free.text) // 2:][:3]
    options = GenerationOptions(max_tokens=30, stop=(stop,), logprobs=1)
    cut = engine.complete(ids, options)
    assert cut.finish_reason == "stop" and cut.text == free.text[:free.text.index(stop)]
    assert "".join(e.token for e in cut.logprobs) == cut.text
    assert len(cut.logprobs) < cut.completion_tokens
    pieces, state = streamed(engine, ids, options)
    assert "".join(pieces) == cut.text and state.logprobs == cut.logprobs


def test_batched_requests_get_their_solo_logprobs(engine):
    requests = [(chat(engine, "Hi"), GenerationOptions(max_tokens=6, logprobs=3)),
                (chat(engine, "Paris is a city in"), GenerationOptions(max_tokens=9, logprobs=1)),
                (chat(engine, "x"), GenerationOptions(max_tokens=5))]
    solo = [engine.complete(ids, options) for ids, options in requests]
    steps = engine.stats["steps"]
    together = queued(engine, requests)
    assert engine.stats["steps"] - steps < 9  # decoded together
    for alone, batched in zip(solo, together):
        assert batched.text == alone.text
        if alone.logprobs is None:
            assert batched.logprobs is None
            continue
        assert [e.token for e in batched.logprobs] == [e.token for e in alone.logprobs]
        for a, b in zip(alone.logprobs, batched.logprobs):
            assert b.logprob == pytest.approx(a.logprob, abs=1e-3)
            assert [t for t, _ in b.top] == [t for t, _ in a.top]
