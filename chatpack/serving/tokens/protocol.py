"""The bodies of ``POST /tokenize`` and ``POST /detokenize``, in vLLM's and llama.cpp's shapes alike.

``/tokenize`` takes one of three texts:

- ``prompt`` (vLLM's text form): the text as it is, with the tokenizer's added special tokens unless
  ``add_special_tokens: false`` (vLLM's default: true);
- ``content`` (llama.cpp's): the same, without them unless ``add_special: true`` (llama.cpp's default: false);
  ``parse_special`` true only (special-token text such as ``<|im_start|>`` is read as that token, as the model reads
  its prompts);
- ``messages`` (vLLM's chat form): OpenAI chat messages (and ``tools``) with the model's chat template applied, as
  ``/v1/chat/completions`` would feed them to the model; ``add_generation_prompt`` true, ``continue_final_message``
  and ``add_special_tokens`` false only (the template is applied as the server applies it); the fields of vLLM's that
  change the template (``chat_template``, ``chat_template_kwargs`` other than ``{}``, ``documents``,
  ``mm_processor_kwargs``) are refused by name.

Either flag name (``add_special_tokens``, ``add_special``) works with either text key; ``with_pieces`` (llama.cpp)
and ``return_token_strs`` (vLLM) ask for each token's text. ``/detokenize`` takes ``tokens`` (a list of token ids).
``model`` may be sent with either (any name: the server answers with the model it serves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatpack.protocol.chat_request import ChatRequest, parse_request
from chatpack.protocol.errors import Neutral, RequestError, refuse_unless_neutral

TEXT_KEYS = ("prompt", "content", "messages")
COMMON = ("model", "with_pieces", "return_token_strs")
TEXT_FIELDS = (*COMMON, "add_special_tokens", "add_special", "parse_special")
CHAT_FIELDS = (*COMMON, "messages", "tools", "tool_choice", "add_generation_prompt", "continue_final_message",
               "add_special_tokens")
TEMPLATE_FIELDS = {
    "chat_template": "the model's own chat template is applied (the one it was logged with)",
    "chat_template_kwargs": "the chat template is applied as the server applies it, with no extra variables",
    "documents": "the chat template is applied without documents",
    "mm_processor_kwargs": "the served models read text only",
}
CHAT_NEUTRAL = {
    "add_generation_prompt": Neutral(lambda v: v is True, "true", "the prompt is rendered as the model is fed it, "
                                     "ready for the assistant's reply"),
    "continue_final_message": Neutral(lambda v: v is False, "false", "the prompt is rendered as the model is fed "
                                      "it, ready for a new assistant reply"),
    "add_special_tokens": Neutral(lambda v: v is False, "false", "the chat template adds the special tokens the "
                                  "model is fed"),
}
TEXT_NEUTRAL = {"parse_special": Neutral(lambda v: v is True, "true", "special-token text is read as the special "
                                         "token, as the model reads its prompts")}


@dataclass(frozen=True)
class TokenizeRequest:
    """What to tokenise: ``text`` (with the tokenizer's added special tokens when ``add_special``) or ``chat`` (its
    prompt after the chat template); ``pieces``: tokens as ``{"id", "piece"}`` objects (llama.cpp's
    ``with_pieces``); ``token_strs``: each token's text beside the ids (vLLM's ``return_token_strs``)."""

    text: str | None = None
    chat: ChatRequest | None = None
    add_special: bool = False
    pieces: bool = False
    token_strs: bool = False


def parse_tokenize(body: Any) -> TokenizeRequest:
    """A ``/tokenize`` body (see the module docstring); bad ones raise ``RequestError`` naming the field."""
    body = _object(body)
    if body.get("chat_template_kwargs") == {}:  # no extra variables: the template as the server applies it
        del body["chat_template_kwargs"]
    given = [key for key in TEXT_KEYS if key in body]
    if len(given) != 1:
        what = "required" if not given else f"give one of them, not {' and '.join(given)}"
        raise RequestError(given[-1] if given else "prompt", f"{'/'.join(TEXT_KEYS)}: {what} (the text to tokenise: "
                                                             "'prompt' or 'content', or chat 'messages')")
    key = given[0]
    allowed = CHAT_FIELDS if key == "messages" else (key, *TEXT_FIELDS)
    for name in sorted(body):
        if name in TEMPLATE_FIELDS:
            raise RequestError(name, f"{name}: not supported: {TEMPLATE_FIELDS[name]}")
        if name not in allowed:
            raise RequestError(name, f"{name}: unsupported field with '{key}' (supported: "
                                     f"{', '.join(sorted(allowed))})")
    for name in ("model",):
        if name in body and not isinstance(body[name], str):
            raise RequestError(name, f"{name}: expected a string, got {type(body[name]).__name__}")
    flags = {name: _flag(body, name) for name in ("with_pieces", "return_token_strs", "add_special_tokens",
                                                   "add_special", "parse_special", "add_generation_prompt",
                                                   "continue_final_message") if name in body}
    pieces, strs = flags.get("with_pieces", False), flags.get("return_token_strs", False)
    if key == "messages":
        refuse_unless_neutral(flags, CHAT_NEUTRAL)
        chat = parse_request({k: body[k] for k in ("messages", "tools", "tool_choice") if k in body})
        return TokenizeRequest(chat=chat, pieces=pieces, token_strs=strs)
    refuse_unless_neutral(flags, TEXT_NEUTRAL)
    if not isinstance(body[key], str):
        raise RequestError(key, f"{key}: expected a string, got {type(body[key]).__name__}")
    if "add_special_tokens" in flags and "add_special" in flags:
        raise RequestError("add_special", "add_special: give add_special_tokens (vLLM's name) or add_special "
                                          "(llama.cpp's), not both")
    default = key == "prompt"  # vLLM adds them unless told not to, llama.cpp only when told to
    add = flags.get("add_special_tokens", flags.get("add_special", default))
    return TokenizeRequest(text=body[key], add_special=add, pieces=pieces, token_strs=strs)


def parse_detokenize(body: Any, vocab_size: int | None = None) -> list[int]:
    """A ``/detokenize`` body's token ids, each checked against the vocabulary when its size is known."""
    body = _object(body)
    for name in sorted(body):
        if name not in ("model", "tokens"):
            raise RequestError(name, f"{name}: unsupported field (supported: model, tokens)")
    if "tokens" not in body:
        raise RequestError("tokens", "tokens: required (a list of token ids)")
    tokens = body["tokens"]
    if not isinstance(tokens, list):
        raise RequestError("tokens", f"tokens: expected a list of token ids, got {type(tokens).__name__}")
    for i, token in enumerate(tokens):
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise RequestError("tokens", f"tokens[{i}]: expected a token id (an integer >= 0), got {token!r}"[:200])
        if vocab_size is not None and token >= vocab_size:
            raise RequestError("tokens", f"tokens[{i}]: {token} is not a token id of this model (its vocabulary "
                                         f"has {vocab_size} ids)")
    return tokens


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(None, f"request: expected a JSON object, got {type(body).__name__}")
    return {k: v for k, v in body.items() if v is not None}


def _flag(body: dict[str, Any], name: str) -> bool:
    if not isinstance(body[name], bool):
        raise RequestError(name, f"{name}: expected true or false, got {body[name]!r}"[:200])
    return body[name]
