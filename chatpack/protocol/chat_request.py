"""Parse one request, chat-completions or raw-prompt form, into a :class:`ChatRequest`; bad ones raise
:class:`~chatpack.protocol.errors.RequestError` naming the field.

Shared by the onnxruntime-genai pyfunc and the OpenAI-compatible server, so both accept and refuse the same things.
The rules live in the pydantic models of :mod:`chatpack.protocol.request_model`; this module picks the form, turns
the first validation error into one line (``messages[0].role: 'wizard' is not one of ...``, ``temperature: must be
between 0 and 2, got 3``) and hands the engine plain :class:`GenerationOptions`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from chatpack.protocol.errors import RequestError, refuse_unless_neutral
from chatpack.protocol.reply_format import Guidance, ReplyFormat, read_reply_format
from chatpack.protocol.request_model import MAX_SEED, NEUTRAL_CHAT_FIELDS, ChatBody, ChatMessage, PromptBody, present
from chatpack.protocol.validation_text import explain, shown

__all__ = ["ChatRequest", "GenerationOptions", "RequestError", "choice_seed", "model_payload", "parse_request",
"validate_body"]
_ECHOED = {"function": {"parsed_arguments"}}  # what openai's parse() adds to a call: not part of the conversation


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request generation options; ``None`` means "not set by the caller" (the model's defaults apply)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    guidance: Guidance | None = None  # a decoding constraint (structured output, tool calls); set by the model
    logprobs: int | None = None  # None: no logprobs; k >= 0: each token's logprob and its step's k most likely

    def over(self, defaults: dict[str, Any]) -> GenerationOptions:
        """These options on top of the logged defaults: only fields the caller set override them."""
        return GenerationOptions(
            max_tokens=self.max_tokens if self.max_tokens is not None else defaults.get("max_new_tokens"),
            temperature=self.temperature if self.temperature is not None else defaults.get("temperature"),
            top_p=self.top_p if self.top_p is not None else defaults.get("top_p"),
            top_k=self.top_k if self.top_k is not None else defaults.get("top_k"),
            stop=self.stop,
            n=self.n,
            seed=self.seed,
            guidance=self.guidance,
            logprobs=self.logprobs,
        )

    def for_choice(self, index: int) -> GenerationOptions:
        """The options of choice ``index`` of ``n``: its own seed (:func:`choice_seed`), the rest the same."""
        seed = choice_seed(self.seed, index)
        return self if seed == self.seed else dataclasses.replace(self, seed=seed)


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` (0-based) of a request that set ``seed``: ``seed + index``, as vLLM does, so that
    n sampled choices differ and the same request gives the same n choices again (wrapped to stay an int64)."""
    return None if seed is None else (seed + index) % (MAX_SEED + 1)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]] | None  # exactly one of messages / prompt is set
    prompt: str | None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    stream: bool = False
    reply_format: ReplyFormat | None = None  # response_format / tools, when the request sets any of them
    text_completion: bool = False  # raw-prompt form: answer with a ``text_completion`` object, not the string
    include_usage: bool = False  # stream_options.include_usage: a streamed reply ends with a chunk of its usage


def validate_body(body: Any) -> ChatBody | PromptBody:
    """The validated request model for ``body`` (a JSON object or a pandas row as a dict)."""
    if not isinstance(body, dict):
        raise RequestError(None, f"request: expected a JSON object, got {type(body).__name__}")
    body = present(body)
    has_messages, has_prompt = "messages" in body, "prompt" in body
    if has_messages and has_prompt:
        raise RequestError("prompt", "prompt: give either 'messages' (chat) or 'prompt' (raw prompt), not both")
    if not has_messages and not has_prompt:
        raise RequestError("messages", "messages: required (a non-empty list of {role, content} objects)")
    model: type[ChatBody] | type[PromptBody] = ChatBody if has_messages else PromptBody
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        param, message = explain(exc, model)
        raise RequestError(param, message) from None
    if isinstance(request, ChatBody):
        refuse_unless_neutral({name: getattr(request, name) for name in NEUTRAL_CHAT_FIELDS}, NEUTRAL_CHAT_FIELDS,
                              shown)
    return request


def parse_request(body: Any) -> ChatRequest:
    """Validate one request and return what generation needs (``developer`` turns become ``system`` turns)."""
    request = validate_body(body)
    max_tokens, reply_format = request.max_tokens, None
    if isinstance(request, ChatBody):
        if max_tokens is None:
            max_tokens = request.max_completion_tokens
        messages: list[dict[str, Any]] | None = conversation(request.messages)
        prompt = None
        reply_format = read_reply_format(request.response_format, request.tools, request.tool_choice,
                                         request.parallel_tool_calls)
    else:
        messages, prompt = None, request.prompt
    options = GenerationOptions(max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p,
                                top_k=request.top_k, stop=tuple(request.stop or ()), n=request.n or 1,
                                seed=request.seed, logprobs=logprobs(request.logprobs, request.top_logprobs))
    text_completion = bool(getattr(request, "text_completion", None))
    stream_options = getattr(request, "stream_options", None)
    include_usage = bool(stream_options and stream_options.include_usage)
    return ChatRequest(messages, prompt, options, request.stream, reply_format, text_completion, include_usage)


def model_payload(request: ChatRequest) -> dict[str, Any]:
    """The inverse of :func:`parse_request`: the pyfunc input for ``request`` (its messages, or its raw prompt, plus
    only the options the caller set), as ``serve`` sends it to a model it calls through its pyfunc."""
    o = request.options
    payload: dict[str, Any] = {"messages": request.messages} if request.messages is not None else {
        "prompt": request.prompt}
    if request.text_completion:
        payload["text_completion"] = True
    for key, value in (("max_tokens", o.max_tokens), ("temperature", o.temperature), ("top_p", o.top_p),
                       ("top_k", o.top_k), ("seed", o.seed)):
        if value is not None:
            payload[key] = value
    if o.stop:
        payload["stop"] = list(o.stop)
    if o.n != 1:
        payload["n"] = o.n
    if o.logprobs is not None:
        payload["logprobs"] = True
        if o.logprobs:
            payload["top_logprobs"] = o.logprobs
    if request.reply_format is not None:
        payload.update(request.reply_format.fields)  # response_format, tools, ... as the caller sent them
    return payload


def logprobs(asked: bool | None, top: int | None) -> int | None:
    """How many alternatives per token to report (None: no logprobs): OpenAI's ``logprobs`` + ``top_logprobs``."""
    if top and not asked:  # top_logprobs: 0 is the neutral value clients send with logprobs: false
        raise RequestError("top_logprobs", "top_logprobs: requires logprobs: true")
    return (top or 0) if asked else None


def conversation(turns: list[ChatMessage]) -> list[dict[str, Any]]:
    """The turns as plain dicts (``role``, ``content``, and the tool fields a turn sets); a ``tool`` turn must answer
    a call of an earlier assistant turn."""
    messages, call_ids = [], set()
    for i, m in enumerate(turns):
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [call.model_dump(exclude=_ECHOED) for call in m.tool_calls]
            call_ids.update(call.id for call in m.tool_calls)
        if m.tool_call_id is not None:
            if m.tool_call_id not in call_ids:
                raise RequestError("messages", f"messages[{i}].tool_call_id: {m.tool_call_id!r} answers no tool call "
                                               "of an earlier assistant turn")
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    return messages
