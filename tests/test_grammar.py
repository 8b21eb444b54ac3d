"""Constraints inside the continuous batch on the tiny fixture model (random weights: the mask alone decides the shape):
replies that always validate (fuzzed schemas, sampled hot), the compile cache and its time limit, cancelling a
constrained row, and fast-forwarded replies equal to token-by-token ones."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from chatpack.engine.batch_loop import FORCED_PER_STEP
from chatpack.engine.chat_engine import OnnxChatEngine
from chatpack.engine.guidance import GuidanceError, reply_guidance, styled
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.protocol.reply_format import Guidance, read_reply_format
from chatpack.sources.fetch import fetched_model
from tests.helpers import chat


@pytest.fixture(scope="module")
def engine(fixture_fetch_run) -> OnnxChatEngine:
    return OnnxChatEngine(str(fetched_model(fixture_fetch_run).onnx_dir), max_batch=4)


def schema_options(schema: dict, **options) -> GenerationOptions:
    fmt = read_reply_format({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}, None, None, None)
    return GenerationOptions(guidance=reply_guidance(fmt), **options)


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A bounded random object schema: enums, bounded integers, booleans, short arrays, nested objects."""
    props = {}
    for i in range(rng.randint(1, 3)):
        kind = rng.choice(["enum", "int", "bool", "array"] + (["object"] if depth < 2 else []))
        props[f"k{i}"] = ({"enum": rng.sample(["a", "bb", "ccc", "dddd"], 2)} if kind == "enum" else
                          {"type": "integer", "minimum": 0, "maximum": rng.randint(1, 99)} if kind == "int" else
                          {"type": "boolean"} if kind == "bool" else
                          {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2} if kind == "array" else
                          random_schema(rng, depth + 1))
    return {"type": "object", "properties": props, "required": list(props)}


def test_fuzzed_schemas_sampled_hot_always_give_valid_json(engine):
    rng = random.Random(7)
    for n in range(6):
        schema = random_schema(rng)
        for seed in range(2):
            done = engine.complete(chat(engine, f"q{n}"), schema_options(schema, max_tokens=120, temperature=1.5,
                                                                         seed=seed))
            assert done.finish_reason == "stop", (schema, done)
            jsonschema.validate(json.loads(done.text), schema)


def test_a_compiled_constraint_is_cached_and_its_copies_do_not_share_state(engine):
    schema = {"type": "object", "properties": {"cached": {"type": "boolean"}}, "required": ["cached"]}
    before = dict(engine.grammars.stats)
    first = engine.complete(chat(engine, "a"), schema_options(schema, max_tokens=30))
    second = engine.complete(chat(engine, "a"), schema_options(schema, max_tokens=30))
    assert engine.grammars.stats["compiles"] - before["compiles"] == 1
    assert engine.grammars.stats["cache_hits"] - before["cache_hits"] >= 1
    assert first == second and json.loads(first.text) in ({"cached": True}, {"cached": False})


def test_a_compile_over_the_limit_is_refused_at_once_while_other_requests_flow(engine, monkeypatch):
    monkeypatch.setattr(engine.grammars, "compile_seconds", 0.05)
    # deep nesting and a large enum (past the request size bound, so built directly): far over 50 ms to compile
    schema: dict = {"enum": [f"value_{i}_{'x' * 20}" for i in range(3000)]}
    for depth in range(5):
        schema = {"type": "object", "properties": {f"level{depth}": schema, "other": schema},
                  "required": [f"level{depth}"]}
    guidance = Guidance("json_schema", styled(schema))
    stream = engine.stream(chat(engine, "long"), GenerationOptions(max_tokens=40))
    next(stream)
    start = time.perf_counter()
    with pytest.raises(GuidanceError, match=r"takes more than 0\.05 s to compile"):
        engine.complete(chat(engine, "b"), GenerationOptions(guidance=guidance, max_tokens=5))
    assert time.perf_counter() - start < 1.0
    assert engine.complete(chat(engine, "c"), GenerationOptions(max_tokens=3)).completion_tokens == 3
    assert "".join(stream)  # the stream that was decoding went on


def test_cancelling_a_constrained_stream_frees_its_row(engine):
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
              "required": ["items"]}
    stream = engine.stream(chat(engine, "list"), schema_options(schema, max_tokens=200))
    assert next(stream)
    stream.close()
    deadline = time.time() + 10
    while engine.batch.active and time.time() < deadline:
        time.sleep(0.01)
    assert engine.batch.active == 0


def test_fast_forward_takes_forced_tokens_in_passes_and_replies_as_token_by_token(engine):
    schemas = [{"type": "object", "properties": {"a_rather_long_key_name": {"enum": ["first_choice", "second"]},
                                                 "another_long_key": {"type": "boolean"}},
                "required": ["a_rather_long_key_name", "another_long_key"]},
               {"type": "object", "properties": {"nested_object_key": {"type": "object", "properties": {
                   "inner_key": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["inner_key"]}},
                "required": ["nested_object_key"]}]
    requests = [(chat(engine, f"q{i}"), schema_options(s, max_tokens=80, **sampling))
                for i, s in enumerate(schemas) for sampling in ({}, {"temperature": 1.0, "seed": 3})]
    try:
        engine.batch.fast_forward = False
        steps = engine.stats["steps"]
        by_step = [engine.complete(*r) for r in requests]
        step_count = engine.stats["steps"] - steps
        engine.batch.fast_forward = True
        steps, taken, passes = engine.stats["steps"], engine.stats["forced_taken"], engine.stats["forced_passes"]
        forwarded = [engine.complete(*r) for r in requests]
        assert engine.stats["forced_taken"] - taken > 0 and engine.stats["forced_passes"] - passes > 0
        assert engine.stats["steps"] - steps < step_count
    finally:
        engine.batch.fast_forward = True
    assert forwarded == by_step


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "object", "properties": {"digit": {"type": "integer", "minimum": 0, "maximum": 9}},
                    "required": ["digit"]}
    for level in range(depth, 0, -1):
        key = f"nested_level_{level}"
        schema = {"type": "object", "properties": {key: schema}, "required": [key]}
    return schema


def test_a_reply_its_grammar_mostly_forces_shares_the_batch_and_is_split_the_same_alone(engine, monkeypatch):
    nested = (chat(engine, "deep"), schema_options(nested_schema(12), max_tokens=300))
    free = (chat(engine, "free"), GenerationOptions(max_tokens=60))
    passes, run = [], engine.batch.kv.run

    def spy(first_row, ids, lengths, every_position=False):  # the real pass, noted: (rows active, rows, new tokens)
        passes.append((engine.batch.active, *ids.shape, every_position))
        return run(first_row, ids, lengths, every_position)

    def forced_passes(since: int) -> list[tuple[int, int]]:  # (rows active, tokens) of each fast-forward pass
        return [(active, new) for active, rows, new, every in passes[since:] if rows == 1 and new > 1 and every]

    monkeypatch.setattr(engine.batch.kv, "run", spy)
    alone = engine.complete(*nested)
    solo = forced_passes(0)
    free_alone, mark = engine.complete(*free), len(passes)
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda r: engine.complete(*r), [nested, free]))
    assert together == [alone, free_alone]
    shared = forced_passes(mark)
    assert [new for _, new in shared] == [new for _, new in solo]  # split by its own tokens, not by the load
    assert max(new for _, new in solo) <= FORCED_PER_STEP + 1 and len(solo) >= 3  # more than a turn forced
    assert any(active > 1 for active, _ in shared)  # the free row joined while the nested one still ran
    runs = 0  # forced tokens taken between two decode steps while both ran
    for active, rows, new, every in passes[mark:]:
        if active > 1 and rows == 1 and new > 1 and every:
            runs += new - 1
            assert runs <= FORCED_PER_STEP  # then the free row's next step came
        elif rows > 1 or new == 1:
            runs = 0


def test_constrained_and_free_rows_joining_at_different_times_get_their_solo_replies(engine):
    schema = {"type": "object", "properties": {"v": {"enum": ["p", "q"]}, "n": {"type": "integer", "minimum": 0,
                                                                              "maximum": 50}},
              "required": ["v", "n"]}
    requests = [(chat(engine, "free"), GenerationOptions(max_tokens=30)),
                (chat(engine, "json"), schema_options(schema, max_tokens=40)),
                (chat(engine, "hot"), schema_options(schema, max_tokens=40, temperature=1.2, seed=9)),
                (chat(engine, "free2"), GenerationOptions(max_tokens=20, temperature=0.7, seed=1))]
    alone = [engine.complete(*r) for r in requests]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        time.sleep(0.02 * i)  # each joins the running batch a little later
        results[i] = engine.complete(*requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[i] for i in range(len(requests))] == alone
