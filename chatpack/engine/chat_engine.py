"""The chat engine: chat template and tokenising, the context policy, streamed and whole replies.

One :class:`OnnxChatEngine` holds one model (:class:`~chatpack.engine.genai_model.GenaiModel`) and answers many
requests, each in a fresh generator. Every reply goes through the shared decode step
(:mod:`chatpack.engine.decode_step`); who gets the model when is the :class:`~chatpack.engine.scheduler.Scheduler`'s
business: greedy ``complete`` calls that arrive while the model is busy are answered together in one batched
generator, with the same replies as alone; streams, sampled and constrained requests run one at a time.

A request with a decoding constraint (``options.guidance``) gets its generator made, and the constraint compiled, when
it is submitted, before it waits for the model: a constraint that does not compile fails at the call and never holds
the model. Conversations with tools are rendered by :mod:`chatpack.engine.tool_prompt`. Requests that ask for
logprobs (``options.logprobs``) batch like the others: each row reads its own row of the step's logits
(:mod:`chatpack.engine.logprobs`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatpack.engine.decode_step import RowDecoder, StreamState, decode
from chatpack.engine.genai_model import GenaiModel
from chatpack.engine.logprobs import TokenLogprob, TokenTrack, Vocabulary
from chatpack.engine.scheduler import Pending, Scheduler
from chatpack.engine.search_options import GREEDY
from chatpack.engine.tool_calls import CallGuard
from chatpack.engine.tool_prompt import conversation, template_takes_tools
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.protocol.reply_format import ReplyFormat

__all__ = ["Completion", "ContextOverflow", "OnnxChatEngine", "StreamState"]

logger = logging.getLogger(__name__)


class ContextOverflow(ValueError):
    """The prompt leaves no room for a reply in the model's context (the caller decides which field to blame)."""

    def __init__(self, prompt_tokens: int, context_length: int):
        super().__init__(f"the prompt is {prompt_tokens} tokens; this model's context is {context_length} tokens "
                         "including the reply")
        self.prompt_tokens, self.context_length = prompt_tokens, context_length


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # when ``options.logprobs`` asked for them


class OnnxChatEngine:
    """Chat replies from the onnxruntime-genai model folder ``model_dir``; ``defaults`` are the logged generation
    options (``max_new_tokens``, ``temperature``, ...), ``max_batch`` the most queued requests answered together,
    ``threads`` the decoder's intra-op threads (None: onnxruntime's default)."""

    def __init__(self, model_dir: str | Path, defaults: dict | None = None, max_batch: int = 8,
                 threads: int | None = None):
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.genai = GenaiModel(model_dir, threads)
        self.model, self.tokenizer = self.genai.model, self.genai.tokenizer
        self.context_length, self.eos_ids = self.genai.context_length, self.genai.eos_ids
        self.defaults = dict(defaults or {})
        self.max_batch = max_batch
        self.scheduler = Scheduler(self._answer, self.context_length, max_batch)
        self.stats = self.scheduler.stats
        self.native_tools = template_takes_tools(model_dir)
        self.vocabulary = Vocabulary(self.decode_ids, self.encode_text("a")[-1])
        logger.info("Constrained decoding ready in %.2f s (tools through the chat template: %s)",
                    self.genai.warm_up(), self.native_tools)

    # -- prompts ---------------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict], reply_format: ReplyFormat | None = None) -> list[int]:
        """Token ids of ``messages`` rendered with the model's own chat template (from its tokenizer files); tools
        and tool turns go through the template where it takes them, as text otherwise."""
        turns, tools = conversation(messages, reply_format, self.native_tools)
        extra = {"tools": json.dumps(tools)} if tools else {}
        text = self.tokenizer.apply_chat_template(json.dumps(turns), add_generation_prompt=True, **extra)
        return self.encode_text(text)

    def encode_text(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(np.asarray(ids, dtype=np.int32))

    def check_fits(self, prompt_ids: list[int]) -> None:
        """Raise :class:`ContextOverflow` when no reply token fits after the prompt."""
        if len(prompt_ids) >= self.context_length:
            raise ContextOverflow(len(prompt_ids), self.context_length)

    # -- replies ---------------------------------------------------------------------------------------------------
    def stream(self, prompt_ids: list[int], options: GenerationOptions, state: StreamState | None = None
               ) -> Iterator[str]:
        """Yield the reply's text piece by piece; ``state`` receives token counts and the finish reason.

        Bad requests fail here, at the call. Stop sequences are cut from the reply and never leak into the stream;
        closing the iterator stops generation and frees the model.
        """
        item = self._pending(prompt_ids, options, state)
        return self._stream(item)

    def complete(self, prompt_ids: list[int], options: GenerationOptions) -> Completion:
        """The whole reply. Greedy requests are queued and answered in batches with whoever else is waiting."""
        item = self._pending(prompt_ids, options)
        self.scheduler.submit(item)
        state = item.state
        return Completion(item.text, state.finish_reason or "length", state.prompt_tokens, state.completion_tokens,
                          state.logprobs)

    def _pending(self, prompt_ids: list[int], options: GenerationOptions, state: StreamState | None = None
                 ) -> Pending:
        """The request with the model's defaults applied and its token budget; refuses a prompt that leaves none.
        A constrained request's generator is made here (raises GuidanceError when its constraint does not compile)."""
        options = options.over(self.defaults)
        self.check_fits(prompt_ids)
        budget = self.context_length - len(prompt_ids)
        max_new = min(options.max_tokens, budget) if options.max_tokens else budget
        item = Pending(prompt_ids, options, max_new, state if state is not None else StreamState(len(prompt_ids)))
        if options.guidance is not None:
            item.generator = self.genai.create(len(prompt_ids), 1, options, max_new)
        return item

    def _stream(self, item: Pending) -> Iterator[str]:
        with self.scheduler.model_lock:
            for (piece,) in self._decode([item], item.options):
                if piece:
                    yield piece

    def _answer(self, group: list[Pending]) -> None:
        """The scheduler's callback: a lone request with its own options, several (greedy by construction) at once."""
        for _ in self._decode(group, group[0].options if len(group) == 1 else GREEDY):
            pass

    def _decode(self, group: list[Pending], options: GenerationOptions) -> Iterator[list[str]]:
        """Decode ``group`` in one generator (the caller holds the model lock); fills in each request's text."""
        rows = [self._row(item) for item in group]
        prompts = [item.prompt_ids for item in group]
        if group[0].generator is not None:  # made ahead (constrained: always alone)
            generator, group[0].generator = self.genai.fill(group[0].generator, prompts), None
        else:
            generator = self.genai.generator(prompts, options, max(item.max_new for item in group))
        yield from decode(generator, rows)
        for item, row in zip(group, rows):
            item.text = row.text

    def _row(self, item: Pending) -> RowDecoder:
        """The decode step of one request: stop sequences apply to free text, never inside a constrained reply."""
        guidance, stops, guard = item.options.guidance, item.options.stop, None
        if guidance is not None:
            stops = stops if guidance.free_text else ()
            if guidance.max_calls:
                guard = CallGuard(guidance.max_calls)
        track = None if item.options.logprobs is None else TokenTrack(item.options.logprobs, self.vocabulary)
        return RowDecoder(self.tokenizer, self.eos_ids, stops, item.max_new, item.state, guard, track)
