"""Parse and validate OpenAI chat-completions requests (and the raw-prompt form) with errors that name the field.

Shared by the onnxruntime-genai pyfunc and the OpenAI-compatible server, so both accept and refuse the same things.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "developer")
MAX_STOP_SEQUENCES = 4
MAX_N = 8
# Fields a chat request may carry. The OpenAI fields we do not implement are refused by name, not ignored.
CHAT_FIELDS = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "n",
               "stream", "stream_options", "model", "user", "seed"}
PROMPT_FIELDS = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "n", "stream", "model", "seed"}


class RequestError(ValueError):
    """A bad request; ``param`` names the offending field (OpenAI's error ``param``)."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


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
        )


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]] | None  # exactly one of messages / prompt is set
    prompt: str | None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    stream: bool = False


def parse_request(body: Any, strict_fields: bool = True) -> ChatRequest:
    """Validate one request (a JSON object). ``strict_fields`` refuses fields we do not implement."""
    if not isinstance(body, dict):
        raise RequestError(None, f"request: expected a JSON object, got {type(body).__name__}")
    body = {k: v for k, v in body.items() if not _missing(v)}
    has_messages, has_prompt = "messages" in body, "prompt" in body
    if has_messages and has_prompt:
        raise RequestError("prompt", "prompt: give either 'messages' (chat) or 'prompt' (raw prompt), not both")
    if not has_messages and not has_prompt:
        raise RequestError("messages", "messages: required (a non-empty list of {role, content} objects)")
    allowed = CHAT_FIELDS if has_messages else PROMPT_FIELDS
    if strict_fields:
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise RequestError(unknown[0], f"{unknown[0]}: unsupported field (supported: {', '.join(sorted(allowed))})")
    messages = _messages(body["messages"]) if has_messages else None
    prompt = _prompt(body["prompt"]) if has_prompt else None
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    options = GenerationOptions(
        max_tokens=_int("max_tokens", max_tokens, minimum=1),
        temperature=_number("temperature", body.get("temperature"), 0.0, 2.0),
        top_p=_top_p(body.get("top_p")),
        top_k=_int("top_k", body.get("top_k"), minimum=1),
        stop=_stop(body.get("stop")),
        n=_int("n", body.get("n"), minimum=1, maximum=MAX_N) or 1,
        seed=_int("seed", body.get("seed"), minimum=0),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream", f"stream: expected true or false, got {stream!r}")
    return ChatRequest(messages, prompt, options, stream)


def _missing(value: Any) -> bool:
    """None and NaN (what pandas puts in optional columns a row does not set) count as absent."""
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def _messages(value: Any) -> list[dict[str, str]]:
    if hasattr(value, "tolist"):  # numpy arrays from pandas rows
        value = value.tolist()
    if not isinstance(value, list):
        raise RequestError("messages", f"messages: expected a list of {{role, content}} objects, got "
                                       f"{type(value).__name__}")
    if not value:
        raise RequestError("messages", "messages: must not be empty")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError("messages", f"{where}: expected an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if _missing(role):
            raise RequestError("messages", f"{where}.role: required, one of {', '.join(ROLES)}")
        if role not in ROLES:
            raise RequestError("messages", f"{where}.role: '{role}' is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RequestError("messages", f"{where}.content: expected a string, got {type(content).__name__}")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError("prompt", "prompt: expected a non-empty string")
    return value


def _int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int | None:
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pandas turns optional int columns into floats
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"{name}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise RequestError(name, f"{name}: must be {bound}, got {value}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float) -> float | None:
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(name, f"{name}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(name, f"{name}: must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _top_p(value: Any) -> float | None:
    top_p = _number("top_p", value, 0.0, 1.0)
    if top_p == 0.0:
        raise RequestError("top_p", "top_p: must be in (0, 1], got 0")
    return top_p


def _stop(value: Any) -> tuple[str, ...]:
    if _missing(value):
        return ()
    if hasattr(value, "tolist"):
        value = value.tolist()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop", "stop: expected a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise RequestError("stop", f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}")
    return tuple(stops)
