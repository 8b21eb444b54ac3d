"""``POST /tokenize`` and ``POST /detokenize``: the served model's tokenizer, in vLLM's and llama.cpp's shapes.

``/tokenize`` answers ``{"tokens": [...], "count": N, "max_model_len": L}`` (llama.cpp reads ``tokens``, vLLM all
three): the ids, or with ``with_pieces`` llama.cpp's ``{"id", "piece"}`` objects, plus ``token_strs`` (each token's
text) with ``return_token_strs``. ``/detokenize`` answers ``{"prompt": text, "content": text}`` (vLLM's key and
llama.cpp's), special tokens written out. The bodies: :mod:`chatpack.serving.tokens.protocol`; the tokenizer:
:mod:`chatpack.serving.tokens.serving`. Errors are OpenAI's error body (vLLM's and llama.cpp's servers answer that
shape too); nothing here is admitted to the model's queue (tokenising runs beside generation, on its own threads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatpack.serving.chat.serving import check_supported
from chatpack.serving.http import OPENAI, read_body
from chatpack.serving.served_model import ServedModel
from chatpack.serving.tokens.protocol import TokenizeRequest, parse_detokenize, parse_tokenize
from chatpack.serving.tokens.serving import ModelTokens, require_tokens

TOKENIZE_ROUTE = "/tokenize"
DETOKENIZE_ROUTE = "/detokenize"


def tokenized(tokens: ModelTokens, asked: TokenizeRequest) -> dict[str, Any]:
    ids = tokens.prompt_ids(asked.chat) if asked.chat is not None else tokens.encode(asked.text or "",
                                                                                     asked.add_special)
    pieces = [tokens.piece(i) for i in ids] if asked.pieces or asked.token_strs else []
    body: dict[str, Any] = {"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces)] if asked.pieces else ids,
                            "count": len(ids), "max_model_len": tokens.context_length}
    if asked.token_strs:
        body["token_strs"] = pieces
    return body


def register(app: FastAPI, served: ServedModel) -> None:
    """Add ``POST /tokenize`` and ``POST /detokenize`` to ``app``, over ``served``'s tokenizer."""

    async def answer(request: Request, route: str, work: Callable[[ModelTokens, Any], dict[str, Any]]):
        if served.model is None:
            return OPENAI.response(503, served.load_error or "model is loading")
        body, refused = await read_body(request)
        if refused is not None:
            return refused
        try:
            tokens = require_tokens(served, route)
            return JSONResponse(await asyncio.to_thread(work, tokens, body))
        except Exception as exc:  # a RequestError is a 400 naming its field; anything else a 500
            return OPENAI.of(exc)

    def tokenize_work(tokens: ModelTokens, body: Any) -> dict[str, Any]:
        asked = parse_tokenize(body)
        if asked.chat is not None:
            check_supported(asked.chat, served)
        return tokenized(tokens, asked)

    def detokenize_work(tokens: ModelTokens, body: Any) -> dict[str, Any]:
        text = tokens.decode(parse_detokenize(body, tokens.vocab_size))
        return {"prompt": text, "content": text}

    @app.post(TOKENIZE_ROUTE)
    async def tokenize(request: Request):
        return await answer(request, "tokenize", tokenize_work)

    @app.post(DETOKENIZE_ROUTE)
    async def detokenize(request: Request):
        return await answer(request, "detokenize", detokenize_work)

