"""The request model: OpenAI chat-completions bodies (:class:`ChatBody`) and the raw-prompt form (:class:`PromptBody`).

Strict pydantic models: unknown fields are refused, nothing is coerced (``"5"`` is not a number, ``1`` is not
``true``), and every number has its bounds. Values MLflow's schema enforcement produces are normalised first, as
"the caller did not set this": ``None``/NaN/``pandas.NA`` (pandas fills optional columns a row did not set), numpy
arrays and scalars (list columns, numpy dtypes) become plain Python values, and integral floats become ints for integer
fields (pandas turns optional int columns into float columns: ``5.0``).

No ``from __future__ import annotations`` here: every annotation is a real object when the class is created, so each
model is complete at import and never resolves names later (a served model may import its own copy of this module).
"""

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chatpack.protocol.errors import Neutral

ROLES = ("system", "user", "assistant", "developer", "tool")  # developer is OpenAI's newer name for system
MAX_STOP_SEQUENCES = 4
MAX_N = 8
MAX_TOP_LOGPROBS = 20  # OpenAI's bound
# Upper bounds of integers, so that every accepted number fits the logged model's signature (MLflow's ``long``
# columns are int64: a larger number would fail its schema enforcement, with a message that dumps the whole schema).
MAX_SEED = 2**63 - 1  # int64, OpenAI's seed type
MAX_TOKENS = 2**31 - 1  # int32, what onnxruntime-genai counts tokens in (the model's context caps it long before)
MAX_TOP_K = 2**31 - 1
Role = Literal["system", "user", "assistant", "developer", "tool"]
NonEmptyStr = Annotated[str, Field(min_length=1)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


def is_unset(value: Any) -> bool:
    """None, NaN and ``pandas.NA`` (what pandas puts in optional columns a row does not set) count as absent."""
    if value is None or type(value).__name__ == "NAType":
        return True
    return isinstance(value, float) and math.isnan(value)


def plain(value: Any) -> Any:
    """numpy arrays and scalars as Python lists and scalars (``tolist``); anything else unchanged."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes, dict)):
        return value.tolist()
    return value


def present(data: Any) -> Any:
    """A mapping without its unset entries, values made plain; anything else unchanged (validation refuses it)."""
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items() if not is_unset(value)}
    return data


def integral_float(cls: type, value: Any) -> Any:
    """An integer field's value: an integral float (pandas' optional int columns hold ``5.0``) as an int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def one_stop(cls: type, value: Any) -> Any:
    """``stop``'s value: a single string as a list of one."""
    return [value] if isinstance(value, str) else value


class _Normalised(BaseModel):
    """Unset entries dropped and numpy values made plain before validation, at every level of the request."""

    @model_validator(mode="before")
    @classmethod
    def _drop_unset(cls, data: Any) -> Any:
        return present(data)


class _Strict(_Normalised):
    model_config = _STRICT


class ToolCallFunction(_Strict):
    name: NonEmptyStr
    arguments: str  # JSON text, as the model produced it
    parsed_arguments: Any = None  # what openai's parse() adds when its message is sent back: ignored


class MessageToolCall(_Strict):
    """One tool call of an earlier assistant turn, as OpenAI returned it."""

    id: NonEmptyStr
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Strict):
    """One conversation turn. ``name`` (OpenAI's participant name) is accepted and not passed to the template.
    An assistant turn may carry ``tool_calls`` (then ``content`` may be left out); a ``tool`` turn answers one of
    them by ``tool_call_id``."""

    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    # What a reply message carries when a client sends it back as a turn (openai's message objects): ignored.
    refusal: str | None = None
    annotations: list[Any] | None = None
    parsed: Any = None

    @model_validator(mode="before")
    @classmethod
    def _text_parts(cls, data: Any) -> Any:
        """OpenAI's content-parts form (``[{"type": "text", "text": ...}, ...]``) as the one string it stands for, the
        parts' texts joined by newlines (as vLLM does); any other part (images, audio, files) refused by name."""
        value = data.get("content") if isinstance(data, dict) else None
        if not isinstance(value, list):
            return data
        if not value:
            raise ValueError("content: expected a string or a non-empty list of text parts, got an empty list")
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                what = f"{kind!r} parts are not supported (text only)" if isinstance(kind, str) and kind != "text" \
                    else 'expected {"type": "text", "text": "..."}'
                raise ValueError(f"content[{j}]: {what}")
            texts.append(part["text"])
        return {**data, "content": "\n".join(texts)}

    @model_validator(mode="after")
    def _turn_shape(self) -> Any:
        # Messages start with the sub-field they blame: the error text becomes "messages[i].<field>: ...".
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (a string)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls: only assistant turns carry tool calls, not {self.role!r} turns")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id: required in a 'tool' turn (the id of the call it answers)")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id: only 'tool' turns answer a tool call, not {self.role!r} turns")
        return self


class StreamOptions(_Strict):
    """OpenAI's ``stream_options`` (only with ``"stream": true``): with ``include_usage`` a streamed reply ends with
    a chunk of no choices that carries ``usage`` (and every other chunk ``"usage": null``), as OpenAI streams it;
    ``include_obfuscation`` is accepted and has no effect (no padding field is added to the events); other keys are
    refused by name."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingOptions(_Strict):
    """The options every OpenAI generation API takes (chat and text completions alike); ``None`` means "not set"
    (the logged model's defaults apply)."""

    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[NonEmptyStr] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    n: int | None = Field(None, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # choice i of n samples with seed + i (see choice_seed)
    stream: bool = False
    model: str | None = None  # the server answers with the model it serves, whatever is asked for

    _integral_float = field_validator("max_tokens", "n", "seed", mode="before")(integral_float)
    _one_stop = field_validator("stop", mode="before")(one_stop)


class _Options(SamplingOptions):
    """Options both forms of the chat request take: the sampling options, ``top_k`` and chat-style logprobs."""

    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K)
    logprobs: bool | None = None  # each reply token's log-probability (see chatpack.engine.logprobs)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # and its step's most likely alternatives

    _integral_options = field_validator("top_k", "top_logprobs", mode="before")(integral_float)


class ChatBody(_Options):
    """An OpenAI chat-completions request (the fields we implement; the others are refused by name)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)  # OpenAI's newer name for max_tokens
    stream_options: StreamOptions | None = None
    user: str | None = None
    # The reply's shape; checked field by field in chatpack.protocol.reply_format (paths and sizes).
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Not implemented: accepted at their neutral value only (clients send the defaults; see NEUTRAL_CHAT_FIELDS).
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None  # any string pairs: ignored
    service_tier: str | None = None

    _integral_float_too = field_validator("max_completion_tokens", mode="before")(integral_float)


class PromptBody(_Options):
    """The raw-prompt form: ``prompt`` is already in the model's chat format."""

    prompt: NonEmptyStr
    # Answer with an OpenAI ``text_completion`` object (text, finish_reason, logprobs, usage) instead of the string.
    text_completion: bool | None = None


# ChatBody's unimplemented fields, accepted at their neutral value only (see refuse_unless_neutral).
NEUTRAL_CHAT_FIELDS: dict[str, Neutral] = {
    "frequency_penalty": Neutral(lambda v: v == 0, "0", "penalties are not implemented here"),
    "presence_penalty": Neutral(lambda v: v == 0, "0", "penalties are not implemented here"),
    "logit_bias": Neutral(lambda v: not v, "{}", "logit biases are not implemented here"),
    "store": Neutral(lambda v: v is False, "false", "replies are not stored here"),
    "service_tier": Neutral(lambda v: v in ("auto", "default"), "'auto' or 'default'", "there is one tier"),
}

REQUEST_MODELS: tuple[type[BaseModel], ...] = (ToolCallFunction, MessageToolCall, ChatMessage, StreamOptions, ChatBody,
                                               PromptBody)
for _model in REQUEST_MODELS:
    if not _model.__pydantic_complete__:  # pragma: no cover - a forward reference slipped in
        raise ImportError(f"{_model.__name__} is not fully defined at import")
