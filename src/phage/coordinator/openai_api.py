"""OpenAI-compatible endpoints: ``POST /v1/chat/completions`` (SSE and not), ``GET /v1/models``.

Errors use OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``)
so OpenAI clients show them as they would OpenAI's own. A request is placed on a
live node serving the model; if that node fails before any token reached the
client, the request is quietly retried on another node — after the first token,
a stream ends with an error event instead (a client cannot un-read tokens).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from phage.coordinator.chat import ChatCall
from phage.coordinator.chat_request import ChatParams, parse_chat
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.errors import NotFound, PaymentRequired, PhageError, Unavailable

log = logging.getLogger("phage.chat")

MAX_PLACEMENTS = 3
"""Nodes a request may be tried on before the client gets the error."""
OPEN_TIMEOUT_S = 15.0
"""How long a node has to start answering an order."""

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
}


def openai_error(exc: PhageError) -> JSONResponse:
    """A PhageError in OpenAI's error shape."""
    code = "model_not_found" if isinstance(exc, NotFound) and exc.field == "model" else type(exc).__name__
    body = {
        "error": {
            "message": exc.message,
            "type": _TYPES.get(exc.http_status, "server_error"),
            "param": exc.field,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=exc.http_status)


@dataclass(slots=True)
class Piece:
    """What the chat service yields: text, then one final piece with counts (or an error)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    node_id: str = ""
    error: Unavailable | None = None
    reset: bool = False
    """Forget the text so far: the request starts again on another node (non-streaming only)."""


class ChatService:
    """Places chat requests, retries failed placements, meters usage."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def candidates(self, model: str) -> list[str]:
        """Live, admitted, unquarantined nodes serving ``model``."""
        return [live.node.id for live in self.c.chat_nodes() if model in live.models()]

    async def check_credit(self, who: Principal) -> None:
        """402 when the key's credit limit is spent."""
        limit = who.credit_limit_tokens
        if limit is not None:
            used = await self.c.keys.tokens_used(who.key_id)
            if used >= limit:
                raise PaymentRequired(
                    f"this API key has used {used} of its {limit} tokens", field="Authorization"
                )

    async def run(self, who: Principal, params: ChatParams) -> AsyncIterator[Piece]:
        """Serve one request: yields text pieces, then a final piece (or one with an error).

        A stream that already gave the client text cannot be retried; a non-streaming
        request can, from scratch, on another node (a ``reset`` piece says so).
        """
        tried: set[str] = set()
        last_error = Unavailable(f"no live node serves {params.model!r} now", field="model")
        for _ in range(MAX_PLACEMENTS):
            try:
                node_id = self.c.chat.pick(self.candidates(params.model), tried)
            except Unavailable:
                break
            tried.add(node_id)
            order = type(params.order)()
            order.CopyFrom(params.order)
            call = self.c.chat.open(node_id, params.model, order)
            sent = False
            try:
                async for chunk in call.deltas(OPEN_TIMEOUT_S):
                    if chunk.text:
                        sent = True
                        yield Piece(chunk.text, node_id=node_id)
                    if chunk.finish_reason:
                        await self._meter(who, call, chunk.prompt_tokens, chunk.completion_tokens)
                        yield Piece(
                            "", chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens, node_id
                        )
                        return
            except Unavailable as exc:
                last_error = exc
                log.warning("chat %s on node %s failed: %s", call.request_id, node_id[:12], exc.message)
                if sent and params.stream:
                    yield Piece(error=exc, node_id=node_id)
                    return
                if sent:
                    yield Piece(reset=True)
            finally:
                self.c.chat.close(call)
        yield Piece(error=last_error)

    async def _meter(self, who: Principal, call: ChatCall, prompt: int, completion: int) -> None:
        self.c.counters.chat_completions += 1
        await self.c.keys.add_usage(who.key_id, call.model, call.node_id, prompt, completion, self.c.clock())


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def install_openai(app: FastAPI, c: Coordinator, read_json: Callable[[Request], Awaitable[Any]]) -> None:
    """Add the ``/v1`` routes."""
    service = ChatService(c)
    s = c.settings

    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> Response:
        """Models served by live nodes, in OpenAI's list shape."""
        try:
            await c.keys.authenticate(request.headers.get("authorization"))
        except PhageError as exc:
            return openai_error(exc)
        served = sorted({m for live in c.chat_nodes() for m in live.models()})
        data = [
            {"id": m, "object": "model", "created": int(c.started_at), "owned_by": "phage"} for m in served
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request) -> Response:
        """OpenAI-compatible chat; ``stream: true`` answers with server-sent events."""
        try:
            who = await c.keys.authenticate(request.headers.get("authorization"))
            params = parse_chat(
                await read_json(request),
                max_tokens_limit=s.chat_max_tokens,
                default_max_tokens=s.chat_default_max_tokens,
            )
            if not service.candidates(params.model):
                served = sorted({m for live in c.chat_nodes() for m in live.models()})
                raise NotFound(
                    f"the model {params.model!r} does not exist or no live node serves it "
                    f"(served: {', '.join(served) or 'none'})",
                    field="model",
                )
            await service.check_credit(who)
        except PhageError as exc:
            return openai_error(exc)
        cid = f"chatcmpl-{int(time.time() * 1000):x}{id(params) & 0xFFFFFF:06x}"
        created = int(time.time())
        pieces = service.run(who, params)
        if params.stream:
            # Place the chat now, so the order travels to the node while the response is set up.
            head = asyncio.ensure_future(anext(pieces, None))
            return StreamingResponse(
                _stream(pieces, head, cid, created, params),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text: list[str] = []
        async for p in pieces:
            if p.error is not None:
                return openai_error(p.error)
            if p.reset:
                text.clear()
            text.append(p.text)
            if p.finish_reason:
                return JSONResponse(
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": params.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(text)},
                                "logprobs": None,
                                "finish_reason": p.finish_reason,
                            }
                        ],
                        "usage": _usage(p),
                    },
                    headers={"X-Phage-Node": p.node_id},
                )
        return openai_error(Unavailable("the chat ended without an answer"))


def _usage(p: Piece) -> dict[str, int]:
    return {
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.completion_tokens,
        "total_tokens": p.prompt_tokens + p.completion_tokens,
    }


async def _stream(
    pieces: AsyncIterator[Piece],
    first_piece: asyncio.Future[Piece | None],
    cid: str,
    created: int,
    params: ChatParams,
) -> AsyncIterator[bytes]:
    """OpenAI's chunk stream.

    Leaving early (the client hung up) closes ``pieces``, which cancels the generation on the node.
    """
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": params.model}
    first = True
    try:
        p = await first_piece
        while p is not None:
            if p.error is not None:
                err = openai_error(p.error).body
                yield b"data: " + bytes(err) + b"\n\n"
                yield b"data: [DONE]\n\n"
                return
            if first or p.text:
                delta: dict[str, Any] = {"content": p.text}
                if first:
                    delta["role"] = "assistant"
                    first = False
                yield _sse(
                    {
                        **head,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                    }
                )
            if p.finish_reason:
                final: dict[str, Any] = {
                    **head,
                    "choices": [
                        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": p.finish_reason}
                    ],
                }
                if not params.include_usage:
                    final["usage"] = _usage(p)  # usage in every stream; OpenAI's own shape when asked for
                yield _sse(final)
                if params.include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(p)})
                yield b"data: [DONE]\n\n"
                return
            p = await anext(pieces, None)
    finally:
        if not first_piece.done():
            first_piece.cancel()
        await asyncio.gather(first_piece, return_exceptions=True)
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
