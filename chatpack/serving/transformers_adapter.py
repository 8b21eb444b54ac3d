"""How ``serve`` answers with a transformers-flavour chat model: the logged pipeline, driven by the server itself.

MLflow's pyfunc for ``llm/v1/chat`` cannot honour ``stop`` for most models (it loads a tokenizer by the logged source
name, which fails for local, bundled and fixture sources and goes to the hub for hub ones, and it leaves the stop
string in the reply), has no ``predict_stream``, and checks neither roles nor the context length. So ``serve`` loads
the logged pipeline (``mlflow.transformers.load_model(..., return_type="pipeline")``) and generates with it here:

- requests go through the same strict request model as the ONNX flavour (:func:`~chatpack.protocol.chat_request.
  parse_request`), and a prompt that leaves no room in the context, counted with the model's own tokenizer and chat
  template, is refused naming ``messages``;
- the prompt is rendered and tokenised as the pipeline does it (chat template, then the tokenizer), and generation
  options are the pipeline's: the logged ``model_config`` under the request's options, on top of the pipeline's
  defaults (``_prepare_generate_kwargs``); replies to greedy requests equal the pyfunc's;
- ``stop`` is handled by transformers during generation (``stop_strings`` with the model's tokenizer) and cut from
  the reply with the decode step the ONNX engine uses (:class:`~chatpack.engine.detokenizer.RowDecoder`: end of turn,
  counts, stop sequences held back while streaming), so a stop sequence never reaches the client;
- replies stream token by token (generation runs in its own thread and hands tokens over a queue); closing the
  stream stops generation at the next token.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chatpack.engine.detokenizer import RowDecoder, StreamState
from chatpack.protocol.chat_request import GenerationOptions, parse_request
from chatpack.protocol.errors import RequestError
from chatpack.protocol.replies import chat_chunk, chat_completion, completion_id, usage
from chatpack.serving.observability.request_context import mark

logger = logging.getLogger(__name__)

FLAVOUR = "transformers"
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_DONE = object()


class _Cancelled(Exception):
    """Raised inside ``generate`` (from the streamer) to end a generation nobody waits for any more."""


class _Detokenizer:
    """Incremental text of a growing token list (the ``create_stream()`` decoder the decode step expects): the whole
    list is decoded each time (special tokens skipped, leading whitespace dropped as MLflow's flavour does) and the
    new part returned; an unfinished UTF-8 sequence waits for its next token."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""

    def create_stream(self) -> _Detokenizer:
        return _Detokenizer(self.tokenizer)

    def decode(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece


class _TokenQueue:
    """A transformers streamer: the prompt is skipped, each new token goes to ``tokens``; ``cancel`` ends generation."""

    def __init__(self) -> None:
        self.tokens: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self.cancel.is_set():
            raise _Cancelled
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(_DONE)


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The model's context in tokens, from its config (or the tokenizer's limit when that is a real number)."""
    for key in CONTEXT_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


class TransformersChat:
    """A logged ``llm/v1/chat`` transformers model answered by ``serve``: ``predict`` gives ``chat.completion``
    dicts, ``predict_stream`` ``chat.completion.chunk`` dicts, like the ONNX pyfunc."""

    def __init__(self, model_dir: str | Path, metadata: Any):
        import mlflow.transformers

        start = time.perf_counter()
        self.pipeline = mlflow.transformers.load_model(str(model_dir), return_type="pipeline")
        self.tokenizer, self.hf_model = self.pipeline.tokenizer, self.pipeline.model
        self.metadata = metadata
        flavour = metadata.flavors.get("transformers", {})
        self.model_name = str(flavour.get("source_model_name") or "transformers-chat")
        self.defaults = dict(metadata.flavors.get("python_function", {}).get("config") or {})
        self.context_length = context_length(self.hf_model, self.tokenizer)
        eos = self.hf_model.generation_config.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(self.tokenizer.eos_token_id))
        logger.info("Loaded the %s pipeline in %.1f s (context %s tokens)", self.model_name,
                    time.perf_counter() - start, self.context_length)

    # -- prompts ---------------------------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokens the pipeline would feed the model: chat template, then the tokenizer (special tokens as the
        tokenizer adds them). Refuses a prompt that leaves no room for a reply, naming ``messages``."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = [int(t) for t in self.tokenizer(text, verbose=False)["input_ids"]]
        if self.context_length is not None and len(ids) >= self.context_length:
            raise RequestError("messages", f"messages: the prompt is {len(ids)} tokens; this model's context is "
                                           f"{self.context_length} tokens including the reply; shorten the "
                                           "conversation")
        return ids

    def _request(self, payload: Any) -> tuple[list[int], GenerationOptions]:
        request = parse_request(payload)
        if request.messages is None:
            raise RequestError("prompt", "prompt: the transformers flavour takes 'messages' only")
        ids = self.prompt_ids(request.messages)
        mark("tokenised")
        return ids, request.options

    # -- generation ------------------------------------------------------------------------------------------------
    def generate_kwargs(self, options: GenerationOptions, prompt_tokens: int) -> tuple[dict[str, Any], int]:
        """``generate()`` kwargs for ``options`` (the pipeline's defaults filled in) and the token budget."""
        merged = options.over(self.defaults)
        budget = (self.context_length - prompt_tokens) if self.context_length else None
        wanted = merged.max_tokens or getattr(self.pipeline, "_generation_defaults", {}).get("max_new_tokens", 256)
        max_new = min(wanted, budget) if budget else wanted
        kwargs: dict[str, Any] = {"max_new_tokens": max_new}
        sample = self.defaults.get("do_sample")
        if options.temperature == 0:
            sample = False
        if sample is not None:
            kwargs["do_sample"] = bool(sample)
        if sample is not False:
            kwargs |= {k: v for k, v in (("temperature", merged.temperature), ("top_p", merged.top_p),
                                         ("top_k", merged.top_k)) if v is not None}
        if options.stop:
            kwargs |= {"stop_strings": list(options.stop), "tokenizer": self.tokenizer}
        return self.pipeline._prepare_generate_kwargs(kwargs), max_new

    def _pieces(self, prompt_ids: list[int], options: GenerationOptions, state: StreamState) -> Iterator[str]:
        """Generate in a thread of its own and yield the reply's text as it becomes safe to emit."""
        import torch

        kwargs, max_new = self.generate_kwargs(options, len(prompt_ids))
        streamer = _TokenQueue()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                inputs = torch.tensor([prompt_ids])
                self.hf_model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), streamer=streamer,
                                       **kwargs)
            except _Cancelled:
                pass
            except BaseException as exc:  # handed to the consumer, which raises it
                failure.append(exc)
            finally:
                streamer.end()

        if options.seed is not None:
            torch.manual_seed(options.seed)
        row = RowDecoder(_Detokenizer(self.tokenizer), self.eos_ids, options.stop, max_new, state)
        worker = threading.Thread(target=run, name="generate-transformers", daemon=True)
        worker.start()
        try:
            while not row.done:
                token = streamer.tokens.get()
                if token is _DONE:
                    break
                piece = row.push(token)
                if piece:
                    yield piece
            streamer.cancel.set()  # a stop sequence or max_tokens ended the reply: stop generating
            rest = row.finish("length")
            if failure:
                raise failure[0]
            if rest:
                yield rest
        finally:
            streamer.cancel.set()
            worker.join()

    # -- the pyfunc-like interface ---------------------------------------------------------------------------------
    def predict(self, payload: Any, params: Any = None) -> list[dict[str, Any]]:
        prompt_ids, options = self._request(payload)
        choices, completion_tokens = [], 0
        for i in range(options.n):  # choice i samples with seed + i: n distinct samples, reproducible as a set
            state = StreamState(len(prompt_ids))
            text = "".join(self._marked(self._pieces(prompt_ids, options.for_choice(i), state)))
            choices.append((text, state.finish_reason or "length"))
            completion_tokens += state.completion_tokens
        return [chat_completion(self.model_name, choices, len(prompt_ids), completion_tokens)]

    def predict_stream(self, payload: Any, params: Any = None) -> Iterator[dict[str, Any]]:
        prompt_ids, options = self._request(payload)
        if options.n != 1:
            raise RequestError("n", "n: streaming supports n=1 only")
        cid, created = completion_id(), int(time.time())
        state = StreamState(len(prompt_ids))
        yield chat_chunk(cid, self.model_name, created, {"role": "assistant", "content": ""})
        for piece in self._pieces(prompt_ids, options, state):
            yield chat_chunk(cid, self.model_name, created, {"content": piece})
        yield chat_chunk(cid, self.model_name, created, {}, state.finish_reason or "length",
                         usage(state.prompt_tokens, state.completion_tokens))

    @staticmethod
    def _marked(pieces: Iterator[str]) -> Iterator[str]:
        for piece in pieces:
            mark("first_token")
            yield piece
