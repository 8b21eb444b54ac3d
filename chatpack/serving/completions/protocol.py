"""OpenAI's text-completions request (``POST /v1/completions``): the strict request model and the requests it makes.

The prompt is raw text: no chat template (as OpenAI's legacy endpoint). ``prompt`` is a string or a non-empty list of
strings (one choice per prompt and ``n``, in that order); ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS` (16,
OpenAI's default); ``logprobs`` is the legacy integer (0-5 alternatives per token). Fields that would change the
reply in ways not implemented are refused by name unless they hold their neutral value: ``echo`` (true),
``suffix``, ``best_of`` (> 1), ``logit_bias`` (non-empty), ``frequency_penalty``/``presence_penalty`` (non-zero).
Each prompt becomes one raw-prompt :class:`~chatpack.protocol.chat_request.ChatRequest` with ``text_completion``
set (answered with a ``text_completion`` object; see :mod:`chatpack.flavours.onnx_chat.pyfunc_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError, field_validator

from chatpack.protocol.chat_request import ChatRequest, parse_request
from chatpack.protocol.errors import STREAM_OPTIONS_ALONE, Neutral, RequestError, refuse_unless_neutral
from chatpack.protocol.request_model import SamplingOptions, StreamOptions, integral_float, present
from chatpack.protocol.validation_text import explain, shown

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_LOGPROBS = 5  # OpenAI's bound for the legacy logprobs
MAX_PROMPTS = 16
_PROMPT = f"a non-empty string or a non-empty list of at most {MAX_PROMPTS} non-empty strings"


class CompletionBody(SamplingOptions):
    """An OpenAI text-completions request: the sampling options every API takes, the prompt, legacy logprobs, and the
    refused fields by name."""

    prompt: str | list[str]
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    user: str | None = None
    # Not implemented: accepted at their neutral value only (clients send the defaults explicitly).
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logit_bias: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    _integral_legacy = field_validator("logprobs", "best_of", mode="before")(integral_float)


# Not implemented: accepted at their neutral value only (see refuse_unless_neutral).
NEUTRAL_COMPLETION_FIELDS: dict[str, Neutral] = {
    "echo": Neutral(lambda v: v is False, "false", "the prompt is not repeated in the reply here"),
    "suffix": Neutral(lambda v: not v, "''", "insertion (text after the completion) is not implemented here"),
    "best_of": Neutral(lambda v: v == 1, "1", "server-side best-of sampling is not implemented here; use n"),
    "logit_bias": Neutral(lambda v: not v, "{}", "logit biases are not implemented here"),
    "frequency_penalty": Neutral(lambda v: v == 0, "0", "penalties are not implemented here"),
    "presence_penalty": Neutral(lambda v: v == 0, "0", "penalties are not implemented here"),
}


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str]
    n: int
    stream: bool
    include_usage: bool
    requests: list[ChatRequest]  # one raw-prompt request per prompt, answered with a ``text_completion`` object


def parse_completion(body: Any) -> CompletionRequest:
    """Validate a ``/v1/completions`` body; bad ones raise :class:`RequestError` naming the field."""
    if not isinstance(body, dict):
        raise RequestError(None, f"request: expected a JSON object, got {type(body).__name__}")
    body = present(body)
    try:
        request = CompletionBody.model_validate(body)
    except ValidationError as exc:
        param, message = explain(exc, CompletionBody)
        if param == "prompt":
            message = f"prompt: required ({_PROMPT})" if "prompt" not in body else f"prompt: expected {_PROMPT}"
        raise RequestError(param, message) from None
    refuse_unless_neutral({name: getattr(request, name) for name in NEUTRAL_COMPLETION_FIELDS},
                          NEUTRAL_COMPLETION_FIELDS, shown)
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if not prompts or len(prompts) > MAX_PROMPTS or any(not p for p in prompts):
        raise RequestError("prompt", f"prompt: expected {_PROMPT}")
    row: dict[str, Any] = {"text_completion": True, "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS}
    for key in ("temperature", "top_p", "stop", "seed"):
        if getattr(request, key) is not None:
            row[key] = getattr(request, key)
    if request.logprobs is not None:
        row |= {"logprobs": True, "top_logprobs": request.logprobs}
    if request.stream_options is not None and not request.stream:
        raise RequestError("stream_options", STREAM_OPTIONS_ALONE)
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return CompletionRequest(prompts, request.n or 1, request.stream, include_usage,
                             [parse_request({"prompt": p, **row}) for p in prompts])
