"""Batched greedy generation: several requests in one onnxruntime-genai ``Generator`` (``batch_size=N``).

Requests that arrive while the model is busy are answered together in the next batch. Prompts are right-padded to
the longest; each row stops on its own (end of turn, a stop sequence, or its own ``max_tokens``) and the batch ends
when every row has. Greedy rows come out identical to one-at-a-time generation (tests check this); rows keep their
own decoders, stop sequences and token counts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from chatpack.engine.stops import find_stop
from chatpack.protocol.chat_request import GenerationOptions


@dataclass
class Pending:
    """One request waiting for (or in) a batch."""

    prompt_ids: list[int]
    options: GenerationOptions  # already merged with the model's defaults
    max_new: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def generate_batch(engine, batch: list[Pending]) -> None:
    """Answer every request of ``batch`` (greedy) in one generator; fills in each ``Pending``."""
    og = engine._og
    width = max(len(item.prompt_ids) for item in batch)
    rows = np.array([item.prompt_ids + [engine.pad_id] * (width - len(item.prompt_ids)) for item in batch],
                    dtype=np.int32)
    params = og.GeneratorParams(engine.model)
    params.set_search_options(batch_size=len(batch), do_sample=False,
                              max_length=width + max(item.max_new for item in batch))
    generator = og.Generator(engine.model, params)
    generator.append_tokens(rows)
    decoders = [engine.tokenizer.create_stream() for _ in batch]
    active = set(range(len(batch)))
    while active and not generator.is_done():
        generator.generate_next_token()
        tokens = generator.get_next_tokens()
        for i in list(active):
            item, token = batch[i], int(tokens[i])
            if token in engine.eos_ids:
                item.finish_reason = "stop"
            else:
                item.completion_tokens += 1
                item.text += decoders[i].decode(token)
                cut = find_stop(item.text, item.options.stop)
                if cut is not None:
                    item.text, item.finish_reason = item.text[:cut], "stop"
                elif item.completion_tokens >= item.max_new:
                    item.finish_reason = "length"
            if item.finish_reason is not None:
                active.discard(i)
    for i in active:
        batch[i].finish_reason = "length"
