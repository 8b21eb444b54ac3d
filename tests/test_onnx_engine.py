"""The chat engine on the tiny fixture model: one decode step for single, streamed and batched replies.

Requests decoded together in the continuous batch get the replies they get alone, and the replies
onnxruntime-genai's own generator gives; stop sequences, ``max_tokens`` and finish reasons come out the same whichever
way a reply is generated.
"""

from __future__ import annotations

import time

import pytest

from chatpack.engine.chat_engine import ContextOverflow, OnnxChatEngine, StreamState
from chatpack.engine.detokenizer import RowDecoder, held_back
from chatpack.engine.genai_model import search_options
from chatpack.engine.tool_calls import CallGuard
from chatpack.engine.tool_prompt import call_text
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.sources.fetch import fetched_model
from tests.helpers import chat, queued, streamed


@pytest.fixture(scope="module")
def onnx_dir(fixture_fetch_run) -> str:
    return str(fetched_model(fixture_fetch_run).onnx_dir)


@pytest.fixture(scope="module")
def engine(onnx_dir) -> OnnxChatEngine:
    return OnnxChatEngine(onnx_dir)


def test_queued_requests_are_batched_and_match_their_solo_replies(engine):
    prompts = [chat(engine, text) for text in ("Hi", "What is two plus two?", "Hello, how are you today? Tell me.",
                                               "Paris", "x" * 40)]
    options = [GenerationOptions(max_tokens=n) for n in (4, 12, 7, 20, 9)]
    solo = [engine.complete(p, o) for p, o in zip(prompts, options)]
    stop = solo[3].text[3:6]
    options[3] = GenerationOptions(max_tokens=20, stop=(stop,))
    solo[3] = engine.complete(prompts[3], options[3])
    assert solo[3].finish_reason == "stop"
    steps = engine.stats["steps"]
    assert queued(engine, list(zip(prompts, options))) == solo
    assert engine.stats["largest_batch"] >= len(prompts)
    assert engine.stats["steps"] - steps < max(o.max_tokens for o in options)  # decoded together, not in turn


def test_a_stop_sequence_is_cut_the_same_in_single_streamed_and_batched_replies(engine):
    ids = chat(engine, "Hi")
    pieces, _ = streamed(engine, ids, GenerationOptions(max_tokens=30))
    text = "".join(pieces)
    # A stop sequence that starts in one streamed piece and ends in the next: its start must be held back.
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces) - 1)]
    start = next(end - 1 for end in ends if text.find(text[end - 1:end + 2]) == end - 1)
    stop = text[start:start + 3]
    options = GenerationOptions(max_tokens=30, stop=(stop, "never-generated"))
    single = engine.complete(ids, options)
    stream_pieces, state = streamed(engine, ids, options)
    batched = queued(engine, [(ids, options), (chat(engine, "Paris"), GenerationOptions(max_tokens=5))])[0]
    assert single.text == text[:start] and single.finish_reason == "stop"
    assert "".join(stream_pieces) == single.text and state.finish_reason == "stop"
    assert state.completion_tokens == single.completion_tokens
    assert batched == single


def test_each_row_of_a_batch_stops_at_its_own_max_tokens(engine):
    requests = [(chat(engine, text), GenerationOptions(max_tokens=n)) for text, n in (("Hi", 1), ("Paris", 6),
                                                                                   ("x" * 40, 17))]
    solo = [engine.complete(*r) for r in requests]
    assert [(r.completion_tokens, r.finish_reason) for r in solo] == [(1, "length"), (6, "length"), (17, "length")]
    assert queued(engine, requests) == solo


def test_streamed_pieces_join_to_the_complete_reply_with_the_same_counts(engine):
    ids = chat(engine, "What is two plus two?")
    for options in (GenerationOptions(max_tokens=12), GenerationOptions(max_tokens=25, stop=("Hello", " fin")),
                    GenerationOptions(max_tokens=9, stop=("zzz",)), GenerationOptions(max_tokens=10, temperature=0.8,
                                                                                        seed=5)):
        whole = engine.complete(ids, options)
        pieces, state = streamed(engine, ids, options)
        assert all(pieces) and "".join(pieces) == whole.text
        assert (state.prompt_tokens, state.completion_tokens, state.finish_reason) == (
            whole.prompt_tokens, whole.completion_tokens, whole.finish_reason)


def test_the_detokenizer_ends_a_row_on_eos_stop_sequence_or_max_tokens(engine):
    hello = engine.encode_text("Hello fin are")  # three tokens: 'Hello', ' fin', ' are'
    eos = min(engine.eos_ids)

    def run(tokens: list[int], stops: tuple[str, ...] = (), max_new: int = 10) -> tuple[RowDecoder, list[str]]:
        row = RowDecoder(engine.tokenizer, engine.eos_ids, stops, max_new, StreamState(0))
        pieces = [row.push(token) for token in tokens]
        return row, pieces + [row.finish("length")]

    row, pieces = run(hello + [eos])  # end of turn: not counted, not decoded, the text so far goes out
    assert (row.text, row.state.completion_tokens, row.state.finish_reason) == ("Hello fin are", 3, "stop")
    assert "".join(pieces) == "Hello fin are"
    row, pieces = run(hello, stops=(" fin a",))  # " fin" might begin the stop sequence: held back, then cut
    assert pieces[:2] == ["Hello", ""] and "".join(pieces) == "Hello" == row.text
    assert (row.state.completion_tokens, row.state.finish_reason) == (3, "stop")
    row, pieces = run(hello, stops=(" fin x",))  # held back until it turns out not to be a stop sequence
    assert pieces[:3] == ["Hello", "", " fin are"] and row.state.finish_reason == "length"
    row, pieces = run(hello, max_new=2)  # the third token comes after the row ended: ignored
    assert pieces[:3] == ["Hello", " fin", ""]
    assert (row.text, row.state.completion_tokens, row.state.finish_reason) == ("Hello fin", 2, "length")


def test_a_reply_cut_by_max_tokens_while_repeating_a_call_ends_without_the_repeat(engine):
    first = call_text("get_weather", '{"city": "Paris"}')
    tokens = engine.encode_text(f"{first}\n{first}")
    whole = len(engine.encode_text(first))
    assert engine.decode_ids(tokens) == f"{first}\n{first}"
    for max_new in range(whole, len(tokens)):  # cut anywhere in the separator or the repeat, its arguments included
        row = RowDecoder(engine.tokenizer, engine.eos_ids, (), max_new, StreamState(0), CallGuard(8))
        pieces = [row.push(token) for token in tokens[:max_new]] + [row.finish("length")]
        assert (row.text, row.state.finish_reason, row.state.completion_tokens) == (first, "length", max_new), max_new
        assert "".join(pieces) == first  # nothing of the repeat was streamed either
    row = RowDecoder(engine.tokenizer, engine.eos_ids, (), len(tokens), StreamState(0), CallGuard(8))
    assert "".join(row.push(token) for token in tokens) == first and row.state.finish_reason == "stop"


def test_the_batch_gives_the_replies_of_onnxruntime_genais_own_generator(engine, onnx_dir):
    short_rows = OnnxChatEngine(onnx_dir, row_tokens=64)  # these requests do not fit its rows: they run in genai
    requests = [(chat(engine, "Hi"), GenerationOptions(max_tokens=64)),
                (chat(engine, "Paris"), GenerationOptions(max_tokens=70, stop=("zz",))),
                (engine.encode_text("word " * 30), GenerationOptions(max_tokens=80))]
    in_genai = [short_rows.complete(*r) for r in requests]
    assert short_rows.stats["steps"] == 0 and short_rows.stats["prompt_tokens"] == 0
    assert queued(engine, requests) == in_genai


def test_the_generator_copy_of_the_weights_is_loaded_only_for_a_request_longer_than_a_row(onnx_dir):
    engine = OnnxChatEngine(onnx_dir, row_tokens=64)
    fits = engine.complete(chat(engine, "Hi"), GenerationOptions(max_tokens=8))
    assert fits.completion_tokens > 0 and engine.stats["steps"] > 0
    assert not engine.genai.loaded  # everything so far ran on the KV rows' session: the weights are in memory once
    longer = engine.complete(engine.encode_text("word " * 30), GenerationOptions(max_tokens=80))
    assert engine.genai.loaded and longer.completion_tokens > 0


def test_an_open_ended_reply_ends_with_its_kv_row(onnx_dir):
    engine = OnnxChatEngine(onnx_dir, row_tokens=64)
    ids = chat(engine, "Hi")
    reply = engine.complete(ids, GenerationOptions())
    assert reply.finish_reason == "length" or reply.completion_tokens < 64 - len(ids)
    assert len(ids) + reply.completion_tokens <= 64 and engine.stats["steps"] > 0


def test_a_failing_request_reaches_its_caller_and_not_the_others(engine):
    bad = chat(engine, "Hi") + [10**6]  # no such token: the model's embedding lookup fails
    requests = [(chat(engine, "Paris"), GenerationOptions(max_tokens=4)), (bad, GenerationOptions(max_tokens=4)),
                (chat(engine, "x" * 40), GenerationOptions(max_tokens=4))]
    solo = [engine.complete(*requests[0]), None, engine.complete(*requests[2])]
    results = queued(engine, requests)
    assert isinstance(results[1], Exception) and "Gather" in str(results[1]) or "indices" in str(results[1])
    assert [results[0], results[2]] == [solo[0], solo[2]]
    with pytest.raises(Exception):
        engine.complete(bad, GenerationOptions(max_tokens=4, temperature=1.0))  # alone: the caller hears it too
    assert engine.complete(*requests[0]).completion_tokens == 4 and engine.batch.active == 0


def test_stream_validates_at_the_call_and_closing_it_frees_the_model(engine):
    with pytest.raises(ContextOverflow) as err:
        engine.stream([5] * engine.context_length, GenerationOptions())  # not iterated: the call itself refuses
    assert (err.value.prompt_tokens, err.value.context_length) == (engine.context_length, engine.context_length)
    pieces = engine.stream(chat(engine, "Hi"), GenerationOptions(max_tokens=200))
    next(pieces)
    assert engine.batch.active == 1
    pieces.close()  # the client went away: the row is freed at the next step
    deadline = time.time() + 30
    while engine.batch.active and time.time() < deadline:
        time.sleep(0.01)
    assert engine.batch.active == 0 and not engine.model_lock.locked()


def test_sampled_requests_stay_repeatable_with_a_seed(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hi"}])
    first = engine.complete(ids, GenerationOptions(max_tokens=8, temperature=1.0, seed=3))
    assert first == engine.complete(ids, GenerationOptions(max_tokens=8, temperature=1.0, seed=3))


def test_search_options_sample_only_above_temperature_zero_and_stay_inside_the_context():
    for greedy in (GenerationOptions(top_p=0.5, top_k=3, seed=1), GenerationOptions(temperature=0.0, top_k=3)):
        assert search_options(greedy, 10, 20, 512) == {"max_length": 30, "do_sample": False, "batch_size": 1}
    sampled = GenerationOptions(temperature=0.7, top_p=0.9, top_k=40, seed=7)
    assert search_options(sampled, 500, 100, 512, batch_size=3) == {
        "max_length": 512, "do_sample": True, "batch_size": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
        "random_seed": 7}
    assert "top_p" not in search_options(GenerationOptions(temperature=0.7), 1, 1, 512)
    big = GenerationOptions(temperature=0.7, seed=2**63 - 1)  # onnxruntime-genai's seed is an int32
    assert search_options(big, 1, 1, 512)["random_seed"] == (2**63 - 1) % 2**31


def test_a_top_k_above_the_vocabulary_samples_from_every_token(engine):
    ids = chat(engine, "Tell me a story.")
    vocab = engine.genai.vocab_size
    assert vocab and search_options(GenerationOptions(temperature=1.0, top_k=10**6), 1, 1, 512, 1, vocab)["top_k"] \
        == vocab
    wide = engine.complete(ids, GenerationOptions(max_tokens=6, temperature=1.0, top_k=10**6, seed=3))
    assert wide.text == engine.complete(ids, GenerationOptions(max_tokens=6, temperature=1.0, top_k=vocab, seed=3)).text


def test_n_seeded_choices_sample_with_seed_plus_index_and_greedy_ones_agree(engine):
    ids = chat(engine, "Tell me a story.")
    seeded = GenerationOptions(max_tokens=12, temperature=1.0, seed=7, n=3)
    texts = [engine.complete(ids, seeded.for_choice(i)).text for i in range(3)]
    assert len(set(texts)) == 3
    assert texts[1] == engine.complete(ids, GenerationOptions(max_tokens=12, temperature=1.0, seed=8)).text
    assert seeded.for_choice(0) == seeded and GenerationOptions(n=3).for_choice(2) == GenerationOptions(n=3)
    assert GenerationOptions(seed=2**63 - 1).for_choice(1).seed == 0  # wraps inside int64


def test_held_back_text_is_the_longest_possible_start_of_a_stop_sequence():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("xyz",)) == 0
    assert held_back("ab", ("abc", "b")) == 2
