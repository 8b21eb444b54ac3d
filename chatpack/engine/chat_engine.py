"""The chat engine: chat template and tokenising, the context policy, streamed and whole replies.

One :class:`OnnxChatEngine` holds one model folder and answers many requests. Every request whose prompt plus
``max_tokens`` fits a KV row (:mod:`chatpack.engine.kv_rows`, ``row_tokens`` tokens each) goes to the continuous batch
(:mod:`chatpack.engine.batch_loop`): greedy or sampled, streamed or whole, with or without logprobs, and with or
without a decoding constraint (``options.guidance``: structured output, tools). They join the running batch between
two decode steps, reuse the KV cache of an earlier request whose tokens their prompt extends, and, alone and greedy
(unconstrained), verify prompt-lookup drafts. A constrained request decodes under its own token mask
(:mod:`chatpack.engine.grammar`, LLGuidance). A request that does not fit a row runs alone in an onnxruntime-genai
generator (:class:`~chatpack.engine.genai_model.GenaiModel`), between two steps of the batch (``model_lock``), under
the same matcher. Every reply goes through the shared detokenizer (:mod:`chatpack.engine.detokenizer`).

A constrained request gets its matcher when it is submitted, before it waits for the model: the constraint compiles
there (or comes from the cache of compiled constraints), off the batch thread and within the compile time limit, so
a constraint that does not compile, or not in time, fails at the call and never holds the model. Conversations with
tools are rendered by :mod:`chatpack.engine.tool_prompt`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatpack.engine.batch_loop import BatchLoop
from chatpack.engine.detokenizer import RowDecoder, StreamState, decode
from chatpack.engine.genai_model import GenaiModel
from chatpack.engine.grammar import DEFAULT_COMPILE_SECONDS, Grammars
from chatpack.engine.kv_rows import KvRows
from chatpack.engine.logprobs import TokenLogprob, TokenTrack, Vocabulary
from chatpack.engine.memory import kv_budget_bytes, row_layout
from chatpack.engine.sampler import Sampler
from chatpack.engine.scheduler import FairLock, Job
from chatpack.engine.tool_calls import CallGuard
from chatpack.engine.tool_prompt import conversation, template_takes_tools
from chatpack.protocol.chat_request import GenerationOptions
from chatpack.protocol.reply_format import ReplyFormat

__all__ = ["Completion", "ContextOverflow", "OnnxChatEngine", "StreamState"]

logger = logging.getLogger(__name__)

DEFAULT_KV_CACHE_MB = 0  # the KV rows' memory budget; 0: from the machine's memory (chatpack.engine.memory)
SPECULATE = 0  # the longest prompt-lookup draft a greedy request verifies in one pass (0: off; docs/design/batching.md)


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
    cached_tokens: int = field(default=0, compare=False)  # prompt tokens reused from a KV row's prefix (not the reply)


@dataclass
class Pending:
    """One request, checked and budgeted: its prompt, options (merged with the model's defaults), token budget and
    reply state; ``text`` is filled in once it has been answered."""

    prompt_ids: list[int]
    options: GenerationOptions  # already merged with the model's defaults
    max_new: int
    state: StreamState
    matcher: Any = None  # the constraint's matcher (chatpack.engine.grammar.RowMatcher), made before the model is taken
    text: str = ""


class OnnxChatEngine:
    """Chat replies from the onnxruntime-genai model folder ``model_dir``; ``defaults`` are the logged generation
    options (``max_new_tokens``, ``temperature``, ...), ``max_batch`` the most requests decoding together (KV rows),
    ``threads`` the intra-op threads (None: onnxruntime's default), ``kv_cache_mb`` the KV rows' memory budget
    (0: from the machine's memory, :func:`~chatpack.engine.memory.kv_budget_bytes`; the layout:
    :func:`~chatpack.engine.memory.row_layout`; ``row_tokens`` sets a row's length instead), ``speculate`` the
    longest prompt-lookup draft (0: off), ``compile_seconds`` the longest a constraint may take to compile,
    ``reuse_decoded`` lets a conversation's next turn reuse the reply as decoded (inexact; see
    :class:`~chatpack.engine.batch_loop.BatchLoop`), ``fast_forward`` whether constrained rows take the tokens their
    grammar forces in passes of their own."""

    def __init__(self, model_dir: str | Path, defaults: dict | None = None, max_batch: int = 8,
                 threads: int | None = None, kv_cache_mb: int = DEFAULT_KV_CACHE_MB, speculate: int = SPECULATE,
                 row_tokens: int | None = None, compile_seconds: float = DEFAULT_COMPILE_SECONDS,
                 reuse_decoded: bool = False, fast_forward: bool = True):
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.genai = GenaiModel(model_dir, threads)
        self.tokenizer = self.genai.tokenizer
        self.context_length, self.eos_ids = self.genai.context_length, self.genai.eos_ids
        self.kv = KvRows(model_dir, threads=threads)
        self.grammars = Grammars(model_dir, self.kv.vocab_size, self.eos_ids, compile_seconds)
        self.defaults = dict(defaults or {})
        self.model_lock = FairLock()  # one computation at a time: a batch step, or a step of a lone generator
        whole_row = self.context_length * self.kv.bytes_per_token
        self.kv_budget, self.kv_budget_reason = kv_budget_bytes(kv_cache_mb, max_batch, whole_row)
        rows, fitted = row_layout(max_batch, self.context_length, self.kv.bytes_per_token, self.kv_budget)
        row_tokens = min(row_tokens or fitted, self.context_length)
        self.kv.allocate(rows, row_tokens)
        self.max_batch = rows
        # Rows whose address space exceeds the budget are kept within it by the batch's admission.
        budget_tokens = self.kv_budget // self.kv.bytes_per_token if self.kv.cache_bytes > self.kv_budget else None
        self.batch = BatchLoop(self.kv, self.model_lock, speculate, fast_forward=fast_forward,
                               budget_tokens=budget_tokens, reuse_decoded=reuse_decoded)
        self.stats = self.batch.stats
        self.native_tools = template_takes_tools(model_dir)
        self.vocabulary = Vocabulary(self.decode_ids, self.encode_text("a")[-1])
        self.default_top_k = self.genai.default_top_k
        logger.info("KV cache: %d rows x %d tokens x %d bytes, held within %.0f MB (%s); speculation: %s", rows,
                    row_tokens, self.kv.bytes_per_token, min(self.kv_budget, self.kv.cache_bytes) / 2**20,
                    self.kv_budget_reason, speculate or "off")
        logger.info("Constrained decoding ready in %.2f s (compile limit %g s; tools through the chat template: %s)",
                    self.grammars.warm_up(), compile_seconds, self.native_tools)

    def close(self) -> None:
        """Stop the batch loop (its thread, and the KV rows it holds, go with it) and the compile pool."""
        self.batch.close()
        self.grammars.close()

    def __del__(self) -> None:
        if hasattr(self, "batch"):
            self.batch.close()

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
        return self._job(item).results() if self._batched(item) else self._stream(item)

    def complete(self, prompt_ids: list[int], options: GenerationOptions) -> Completion:
        """The whole reply (decoded in the running batch with whoever else is being answered)."""
        return self.complete_all(prompt_ids, [options])[0]

    def complete_all(self, prompt_ids: list[int], choices: list[GenerationOptions]) -> list[Completion]:
        """One whole reply per options in ``choices`` (the ``n`` choices of a request), decoded together."""
        items = [self._pending(prompt_ids, options) for options in choices]
        jobs = [self._job(item) if self._batched(item) else None for item in items]
        for item, job in zip(items, jobs):
            if job is None:
                for _ in self._stream(item):
                    pass
            else:
                item.text = "".join(job.results())
        return [Completion(item.text, item.state.finish_reason or "length", item.state.prompt_tokens,
                           item.state.completion_tokens, item.state.logprobs, item.state.cached_tokens)
                for item in items]

    def _pending(self, prompt_ids: list[int], options: GenerationOptions, state: StreamState | None = None
                 ) -> Pending:
        """The request with the model's defaults applied and its token budget; refuses a prompt that leaves none.
        A constrained request's matcher is made here (raises GuidanceError when its constraint does not compile, or
        not within the compile limit)."""
        options = options.over(self.defaults)
        self.check_fits(prompt_ids)
        budget = self.context_length - len(prompt_ids)
        if options.max_tokens is None and len(prompt_ids) < self.kv.row_tokens:
            budget = min(budget, self.kv.row_tokens - len(prompt_ids))  # an open-ended reply ends with its KV row
        max_new = min(options.max_tokens, budget) if options.max_tokens else budget
        item = Pending(prompt_ids, options, max_new, state if state is not None else StreamState(len(prompt_ids)))
        if options.guidance is not None:
            item.matcher = self.grammars.matcher(options.guidance)
        return item

    def _batched(self, item: Pending) -> bool:
        """Whether ``item`` decodes in the running batch (its prompt and reply fit a KV row)."""
        return len(item.prompt_ids) + item.max_new <= self.kv.row_tokens

    def _job(self, item: Pending) -> Job:
        sampler = Sampler(item.options, self.default_top_k)
        decoder = self._row(item, StreamState(item.state.prompt_tokens))  # the loop's own; item.state follows reads
        return self.batch.submit(Job(item.prompt_ids, decoder, sampler, item.state, matcher=item.matcher))

    def _stream(self, item: Pending) -> Iterator[str]:
        """A lone generator's reply, each step taken between two steps of the batch (under the request's matcher
        when it is constrained)."""
        row = self._row(item)
        with self.model_lock:  # the prompt's prefill is model compute too
            generator = self.genai.generator([item.prompt_ids], item.options, item.max_new)
        steps = decode(generator, [row], [item.matcher])
        while True:
            with self.model_lock:
                step = next(steps, None)
            if step is None:
                break
            if step[0]:
                yield step[0]
        item.text = row.text

    def _row(self, item: Pending, state: StreamState | None = None) -> RowDecoder:
        """The decode step of one request: stop sequences apply to free text, never inside a constrained reply."""
        guidance, stops, guard = item.options.guidance, item.options.stop, None
        if guidance is not None:
            stops = stops if guidance.free_text else ()
            if guidance.max_calls:
                guard = CallGuard(guidance.max_calls)
        track = None if item.options.logprobs is None else TokenTrack(item.options.logprobs, self.vocabulary)
        return RowDecoder(self.tokenizer, self.eos_ids, stops, item.max_new, state or item.state, guard, track)
