"""From a parsed chat request to the served model's input, for every route that runs one: the pyfunc payload
(:func:`model_payload`) and the check that the model can honour what the request demands (:func:`check_structured`:
constrained decoding, and logprobs, which only ONNX models logged with :data:`FEATURES_KEY` ``logprobs`` report).

The chat route calls both directly; ``/v1/responses`` translates its request into a chat request first and then calls
them too, so every route asks the model the same way and refuses the same things.
"""

from __future__ import annotations

from typing import Any

from chatpack.flavours.onnx_chat.pyfunc_model import FEATURES_KEY
from chatpack.protocol.chat_request import ChatRequest
from chatpack.protocol.errors import RequestError
from chatpack.protocol.reply_format import STRUCTURED_OUTPUTS_KEY, demanded_field
from chatpack.serving.served_model import ServedModel


def model_payload(request: ChatRequest) -> dict[str, Any]:
    """The pyfunc input: the messages plus only the options the caller set."""
    o = request.options
    payload: dict[str, Any] = {"messages": request.messages}
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


def check_structured(chat: ChatRequest, served: ServedModel) -> None:
    """Refuse, naming the field, what needs constrained decoding when the model does not implement it (the
    transformers flavour; ONNX models logged before it): such a model would ignore the field, not honour it."""
    field = demanded_field(chat.reply_format, chat.messages)
    meta = getattr(getattr(served.model, "metadata", None), "metadata", None) or {}
    if field is not None and not meta.get(STRUCTURED_OUTPUTS_KEY):
        what, flavour = "tool turns" if field == "messages" else "it", getattr(served, "flavour", None) or "pyfunc"
        raise RequestError(field, f"{field}: this model ({flavour} flavour) does not implement {what}; structured "
                                  "outputs and tool calls need an ONNX model logged by chatpack with constrained "
                                  "decoding (see README, Structured outputs and tool calls)")
    if chat.options.logprobs is not None and "logprobs" not in model_features(served):
        raise RequestError("logprobs", f"logprobs: this model ({_flavour(served)} flavour) does not report them; "
                                       "logprobs need an ONNX model logged by chatpack with logprobs support (see "
                                       "README, Logprobs)")


def model_features(served: ServedModel) -> set[str]:
    """What the served model declares in its :data:`FEATURES_KEY` metadata (``logprobs``, ``text_completion``)."""
    meta = getattr(getattr(served.model, "metadata", None), "metadata", None) or {}
    return {f for f in str(meta.get(FEATURES_KEY) or "").split(",") if f}


def _flavour(served: ServedModel) -> str:
    return getattr(served, "flavour", None) or "pyfunc"
