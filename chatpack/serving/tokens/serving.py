"""The served model's tokenizer, as the routes that count or show tokens use it (``/tokenize``, ``/detokenize``,
``/v1/messages/count_tokens``, the prompt count a Messages stream starts with).

:func:`model_tokens` gives the tokenizer of either flavour behind one interface (:class:`ModelTokens`):

- an ONNX model logged by chatpack, through its typed engine client (:class:`OnnxTokens`): a chat prompt is the
  engine's own (its chat template, tools included as the engine puts them), a text is encoded as the engine encodes
  a raw prompt; text without the tokenizer's added special tokens, detokenising (special tokens kept) and each
  token's piece come from a second ``onnxruntime_genai`` tokenizer over the same folder with those options, made on
  first use;
- a transformers model (:class:`HfTokens`): the logged pipeline's tokenizer, the prompt rendered as the pipeline
  renders it.

Any other model (an ONNX model logged before the typed client, a custom pyfunc) does not show its tokenizer to the
server, and these routes refuse it by name.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from chatpack.protocol.chat_request import ChatRequest
from chatpack.protocol.errors import RequestError
from chatpack.serving.served_model import ServedModel
from chatpack.serving.transformers_adapter import FLAVOUR as TRANSFORMERS


class ModelTokens:
    """One served model's tokens: ``context_length`` and ``vocab_size`` (None when unknown) and the methods below."""

    context_length: int | None = None
    vocab_size: int | None = None

    def prompt_ids(self, chat: ChatRequest) -> list[int]:
        """The chat request's prompt as the model is fed it: its chat template applied (tools included), however
        long (counting does not refuse a prompt over the context)."""
        raise NotImplementedError

    def encode(self, text: str, add_special: bool) -> list[int]:
        """``text``'s tokens, with the special tokens the tokenizer adds to a text (a BOS) or without them."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens written out (``<|im_start|>``)."""
        raise NotImplementedError

    def piece(self, token: int) -> str:
        """How one token reads inside a text (a leading space kept)."""
        anchor = self._anchor()
        before = self.decode([anchor])
        both = self.decode([anchor, token])
        return both[len(before):] if both.startswith(before) else self.decode([token])

    def count_text(self, text: str) -> int:
        """Tokens of a reply's text (no added special tokens)."""
        return len(self.encode(text, add_special=False)) if text else 0

    def _anchor(self) -> int:
        if not hasattr(self, "_anchor_id"):
            self._anchor_id = self.encode("a", add_special=False)[-1]
        return self._anchor_id


class OnnxTokens(ModelTokens):
    """An ONNX model's tokens, through its engine (see the module docstring)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.context_length = getattr(engine, "context_length", None)
        kv = getattr(engine, "kv", None)
        self.vocab_size = getattr(kv, "vocab_size", None) or getattr(getattr(engine, "genai", None), "vocab_size",
                                                                     None)
        self._plain: Any = None
        self._lock = threading.Lock()

    def prompt_ids(self, chat: ChatRequest) -> list[int]:
        return [int(t) for t in self.engine.encode_chat(chat.messages, chat.reply_format)]

    def encode(self, text: str, add_special: bool) -> list[int]:
        if add_special:
            return [int(t) for t in self.engine.encode_text(text)]  # as the engine encodes a raw prompt
        return [int(t) for t in self.plain.encode(text)]

    def decode(self, ids: list[int]) -> str:
        import numpy as np

        return self.plain.decode(np.asarray(ids, dtype=np.int32))

    @property
    def plain(self) -> Any:
        """The folder's tokenizer adding no special tokens and skipping none when decoding."""
        with self._lock:
            if self._plain is None:
                import onnxruntime_genai as og

                tokenizer = og.Tokenizer(og.Config(str(self.engine.model_dir)))
                tokenizer.update_options(add_special_tokens="false", skip_special_tokens="false")
                self._plain = tokenizer
        return self._plain


class HfTokens(ModelTokens):
    """A transformers model's tokens, with the logged pipeline's tokenizer."""

    def __init__(self, model: Any):
        self.tokenizer = model.tokenizer
        self.context_length = getattr(model, "context_length", None)
        self.vocab_size = len(self.tokenizer)

    def prompt_ids(self, chat: ChatRequest) -> list[int]:
        # as TransformersChat.prompt_ids renders and tokenises it, without its refusal of a prompt over the context
        text = self.tokenizer.apply_chat_template(chat.messages, tokenize=False, add_generation_prompt=True)
        return [int(t) for t in self.tokenizer(text, verbose=False)["input_ids"]]

    def encode(self, text: str, add_special: bool) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


_MADE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ServedModel -> its ModelTokens


def model_tokens(served: ServedModel) -> ModelTokens | None:
    """The served model's tokens (made once per loaded model), or None when it does not show its tokenizer."""
    cached = _MADE.get(served)
    if cached is not None:
        return cached
    tokens: ModelTokens | None = None
    engine = getattr(served.client, "engine", None)
    if engine is not None:
        tokens = OnnxTokens(engine)
    elif served.flavour == TRANSFORMERS:
        model = getattr(served.model, "model", None)  # the ObservedModel's TransformersChat
        if getattr(model, "tokenizer", None) is not None:
            tokens = HfTokens(model)
    if tokens is not None and served.model is not None:
        _MADE[served] = tokens
    return tokens


def require_tokens(served: ServedModel, what: str) -> ModelTokens:
    """The served model's tokens, or a bad request saying that ``what`` needs them."""
    tokens = model_tokens(served)
    if tokens is None:
        flavour = served.flavour or "pyfunc"
        raise RequestError(None, f"{what}: this model ({flavour} flavour) does not show its tokenizer to the server; "
                                 "it needs an ONNX model logged by chatpack (with the typed engine client) or a "
                                 "transformers model")
    return tokens
