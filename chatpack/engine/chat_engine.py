"""Chat generation over an onnxruntime-genai model (0.18 API): chat template, search options, streaming, stops.

One :class:`OnnxChatEngine` holds one ``og.Model`` and answers many requests, each with a fresh ``GeneratorParams``
and ``Generator``. The bindings hold the GIL and are not documented as thread safe, so generation is serialised by a
lock. Greedy ``complete`` calls that arrive while the model is busy wait in a queue and are answered together in one
batched generator (``chatpack.onnx_batch``): concurrent callers get the same replies as alone, at a higher total
throughput. Streams and sampled requests run one at a time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chatpack.engine.batch_decode import Pending, generate_batch
from chatpack.engine.stops import find_stop, held_back
from chatpack.protocol.chat_request import GenerationOptions

logger = logging.getLogger(__name__)


class ContextOverflow(ValueError):
    """The prompt leaves no room for a reply in the model's context (the caller decides which field to blame)."""

    def __init__(self, prompt_tokens: int, context_length: int):
        super().__init__(f"the prompt is {prompt_tokens} tokens; this model's context is {context_length} tokens "
                         "including the reply")
        self.prompt_tokens, self.context_length = prompt_tokens, context_length


@dataclass
class StreamState:
    """Filled in while a stream runs; final once the stream is exhausted."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class OnnxChatEngine:
    def __init__(self, model_dir: str | Path, defaults: dict | None = None, max_batch: int = 8,
                 threads: int | None = None):
        import onnxruntime_genai as og

        self._og = og
        self.model_dir = Path(model_dir)
        config = og.Config(str(model_dir))
        if threads:  # onnxruntime's intra-op threads for the decoder session; unset = onnxruntime's default
            session = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self.threads = threads
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        config = json.loads((self.model_dir / "genai_config.json").read_text())["model"]
        self.context_length = int(config["context_length"])
        eos = config.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(config.get("pad_token_id", next(iter(self.eos_ids), 0)))
        self.defaults = dict(defaults or {})
        self.max_batch = max_batch
        self._lock = threading.Lock()  # held while the model generates
        self._queue_lock = threading.Lock()
        self._queue: list[Pending] = []
        self.stats = {"batches": 0, "largest_batch": 0}  # batched generators run, and the most rows in one

    # -- prompts ---------------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's own chat template (from its tokenizer files)."""
        text = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        return self.encode_text(text)

    def encode_text(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    # -- generation ------------------------------------------------------------------------------------------------
    def check_fits(self, prompt_ids: list[int]) -> None:
        """Raise :class:`ContextOverflow` when no reply token fits after the prompt."""
        if len(prompt_ids) >= self.context_length:
            raise ContextOverflow(len(prompt_ids), self.context_length)

    def stream(self, prompt_ids: list[int], options: GenerationOptions, state: StreamState | None = None
               ) -> Iterator[str]:
        """Yield the reply's text piece by piece; ``state`` receives token counts and the finish reason.

        Stop sequences are cut from the reply; text that might begin a stop sequence is held back until it is known
        not to, so a stop sequence never leaks into the stream.
        """
        options, max_new = self._prepare(prompt_ids, options)  # bad requests fail here, at the call
        state = state if state is not None else StreamState(len(prompt_ids))
        return self._stream(prompt_ids, options, max_new, state)

    def complete(self, prompt_ids: list[int], options: GenerationOptions) -> Completion:
        """The whole reply. Greedy requests are queued and answered in batches with whoever else is waiting."""
        options, max_new = self._prepare(prompt_ids, options)
        item = Pending(prompt_ids, options, max_new)
        if options.temperature or self.max_batch <= 1:
            with self._lock:
                self._run_batch([item])
        else:
            self._answer_queued(item)
        if item.error is not None:
            raise item.error
        return Completion(item.text, item.finish_reason or "length", len(prompt_ids), item.completion_tokens)

    def _answer_queued(self, item: Pending) -> None:
        with self._queue_lock:
            self._queue.append(item)
        while not item.done.is_set():
            with self._lock:  # whoever gets the model answers the queue's head, ours or not
                if not item.done.is_set():
                    with self._queue_lock:
                        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                    self._run_batch(batch)

    def _prepare(self, prompt_ids: list[int], options: GenerationOptions) -> tuple[GenerationOptions, int]:
        options = options.over(self.defaults)
        self.check_fits(prompt_ids)
        budget = self.context_length - len(prompt_ids)
        return options, min(options.max_tokens, budget) if options.max_tokens else budget

    def _run_batch(self, batch: list[Pending]) -> None:
        """Answer ``batch`` (the caller holds the model lock); a row that cannot share the padded width runs alone."""
        width = max(len(item.prompt_ids) for item in batch)
        together, alone = [], []
        for item in batch:
            (together if width + item.max_new <= self.context_length else alone).append(item)
        groups = ([together] if len(together) > 1 else [[item] for item in together]) + [[item] for item in alone]
        for group in groups:
            try:
                if len(group) == 1:
                    item, state = group[0], StreamState(len(group[0].prompt_ids))
                    item.text = "".join(self._generate(item.prompt_ids, item.options, item.max_new, state))
                    item.finish_reason, item.completion_tokens = state.finish_reason, state.completion_tokens
                else:
                    generate_batch(self, group)
                    self.stats["batches"] += 1
                    self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
            except Exception as exc:  # every waiting caller hears about it, none hangs
                for item in group:
                    item.error = exc
            finally:
                for item in group:
                    item.done.set()

    def _stream(self, prompt_ids: list[int], options: GenerationOptions, max_new: int, state: StreamState
                ) -> Iterator[str]:
        with self._lock:
            yield from self._generate(prompt_ids, options, max_new, state)

    def _generate(self, prompt_ids: list[int], options: GenerationOptions, max_new: int, state: StreamState
                  ) -> Iterator[str]:
        """One request's generation loop; the caller holds the model lock."""
        generator = self._generator(prompt_ids, max_new, options)
        decoder = self.tokenizer.create_stream()
        text, emitted = "", 0
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos_ids:
                state.finish_reason = "stop"
                break
            state.completion_tokens += 1
            text += decoder.decode(token)
            cut = find_stop(text, options.stop, emitted)
            if cut is not None:
                if cut > emitted:
                    yield text[emitted:cut]
                state.finish_reason = "stop"
                return
            safe = len(text) - held_back(text, options.stop)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        if len(text) > emitted:
            yield text[emitted:]
        if state.finish_reason is None:
            state.finish_reason = "length"

    def _generator(self, prompt_ids: list[int], max_new: int, options: GenerationOptions):
        og = self._og
        search: dict = {"max_length": len(prompt_ids) + max_new}
        sample = bool(options.temperature)  # temperature 0 or unset: greedy
        search["do_sample"] = sample
        if sample:
            search["temperature"] = options.temperature
            if options.top_p is not None:
                search["top_p"] = options.top_p
            if options.top_k is not None:
                search["top_k"] = options.top_k
            if options.seed is not None:
                search["random_seed"] = options.seed
        params = og.GeneratorParams(self.model)
        params.set_search_options(**search)
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt_ids)
        return generator

