"""OpenAI-compatible endpoints: ``POST /v1/chat/completions`` (SSE and not), ``GET /v1/models``.

Errors use OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``)
so OpenAI clients show them as they would OpenAI's own. A request is placed on a
live node serving the model; if that node fails before any token reached the
client, the request is quietly retried on another node — after the first token,
a stream ends with an error event instead (a client cannot un-read tokens).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Send

from phage.coordinator.chat_check import Answer
from phage.coordinator.chat_request import ChatParams, parse_chat, parse_completion
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.metering import Ticket
from phage.domain.chatcheck import Exchange
from phage.errors import InvalidInput, NotFound, PhageError, RateLimited, Unavailable

log = logging.getLogger("phage.chat")

PASS_THROUGH_ENGINES = {"vllm", "llamacpp", "openai"}
"""Engines that hand tools, tool_choice and response_format to an OpenAI-compatible server."""
CHECKABLE_ENGINES = {"transformers"}
"""Engines that report their answers' token ids, so a trusted node can re-score them."""
EXTENSIONS_HEADER = "X-Phage-Extensions"
"""A request header (``1``) asking for the ``phage`` field in answers: request id, node, check status."""
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
    429: "rate_limit_exceeded",
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
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s or 1)))}
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


@dataclass(slots=True)
class Piece:
    """What the chat service yields: text, then one final piece with counts (or an error)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    node_id: str = ""
    error: PhageError | None = None
    request_id: str = ""
    """On the final piece: the usage log's id for this request (checked chat's verdict lands there)."""
    check: str = ""
    """On the final piece: ``pending`` when the answer will be checked, else empty."""
    model: str = ""
    """On the final piece: the model that answered (an alias's fallback, maybe)."""
    tool_calls: list[dict[str, Any]] | None = None
    """On the final piece: the tool calls the model made, in OpenAI's shape."""
    reset: bool = False
    """Forget the text so far: the request starts again on another node (non-streaming only)."""


class ChatService:
    """Places chat requests, retries failed placements, counts what they delivered."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def candidates(self, model: str, passthrough: bool = False) -> list[str]:
        """Live, admitted, unquarantined nodes serving ``model`` (and honouring tools etc. if asked)."""
        checked = self.c.checker.policy.untrusted > 0
        out = []
        for live in self.c.chat_nodes():
            engines = set(live.node.hardware.get("engines", []))
            if model not in live.models() or (passthrough and not PASS_THROUGH_ENGINES & engines):
                continue
            if checked and not live.node.trusted and not CHECKABLE_ENGINES & engines:
                continue  # its answers could not be checked: an untrusted node must be checkable
            out.append(live.node.id)
        return out

    async def admit(self, who: Principal, params: ChatParams, kind: str = "chat") -> Ticket:
        """Rate limits (429) and the credit hold (402) for one request."""
        order = params.order
        prompt_bytes = len(order.prompt.encode()) + sum(len(m.content.encode()) for m in order.messages)
        return await self.c.meter.begin(
            who, kind, params.model, params.max_tokens, prompt_bytes, len(order.messages)
        )

    async def run(self, ticket: Ticket, params: ChatParams) -> AsyncGenerator[Piece, None]:
        """Serve one request: yields text pieces, then a final piece (or one with an error).

        A stream that already gave the client text cannot be retried; a non-streaming
        request can, from scratch, on another node (a ``reset`` piece says so). However it
        ends — finished, failed, or closed early because the client left — the ticket is
        settled: the key is charged for what was delivered.
        """
        if self.c.sharded.has(params.model) and self.c.sharded_chat is not None:
            async for piece in self._run_sharded(ticket, params):
                yield piece
            return
        clock = self.c.clock
        answer: Answer | None = None
        tried: set[str] = set()
        last_error = Unavailable(f"no live node serves {params.model!r} now", field="model")
        models = [params.model, *params.fallbacks]  # an alias's ordered fallbacks
        passthrough = bool(params.order.extras_json)
        try:
            for _ in range(MAX_PLACEMENTS + len(models) - 1):
                try:
                    node_id = self.c.chat.pick(self.candidates(models[0], passthrough), tried)
                except Unavailable:
                    if len(models) == 1:
                        break
                    models.pop(0)
                    continue
                tried.add(node_id)
                order = type(params.order)()
                order.CopyFrom(params.order)
                call = self.c.chat.open(node_id, models[0], order)
                ticket.node_id, ticket.model = node_id, models[0]
                seen = 0
                check = self.c.checker.wants(node_id)
                text: list[str] = []
                try:
                    async for chunk in call.deltas(OPEN_TIMEOUT_S):
                        if chunk.text:
                            ticket.delivered(chunk.text, call.taken - seen, clock())
                            seen = call.taken
                            if check:
                                text.append(chunk.text)
                        if chunk.finish_reason:
                            ticket.finished, ticket.outcome = True, chunk.finish_reason
                            ticket.text_bytes += len(chunk.tool_calls_json.encode())  # tool calls are output
                            ticket.reported_prompt = chunk.prompt_tokens
                            ticket.reported_completion = chunk.completion_tokens
                            prompt, completion = ticket.charge()
                            self.c.counters.chat_completions += 1
                            if check:
                                ticket.checked = "pending"
                                answer = Answer(
                                    ticket.id,
                                    node_id,
                                    models[0],
                                    params.order,
                                    Exchange(
                                        tuple(chunk.token_ids),
                                        "".join(text),
                                        chunk.finish_reason,
                                        params.max_tokens,
                                        params.order.temperature,
                                        bool(params.order.stop),
                                    ),
                                )
                            yield Piece(
                                chunk.text,
                                chunk.finish_reason,
                                prompt,
                                completion,
                                node_id,
                                request_id=ticket.id,
                                check=ticket.checked,
                                model=models[0],
                                tool_calls=_tool_calls(chunk.tool_calls_json),
                            )
                            return
                        if chunk.text:
                            yield Piece(chunk.text, node_id=node_id)
                except InvalidInput as exc:  # e.g. a prompt longer than the model's context: 400 at once
                    ticket.outcome = "refused"
                    yield Piece(error=exc, node_id=node_id)
                    return
                except Unavailable as exc:
                    last_error = exc
                    log.warning("chat %s on node %s failed: %s", call.request_id, node_id[:12], exc.message)
                    if ticket.chunks and params.stream:
                        ticket.outcome = "node_failed"
                        yield Piece(error=exc, node_id=node_id)
                        return
                    if ticket.chunks:
                        ticket.restart()
                        yield Piece(reset=True)
                finally:
                    self.c.chat.close(call)
            ticket.node_id, ticket.outcome = "", "unavailable"
            yield Piece(error=last_error)
        finally:
            recorded = self.c.meter.finish(ticket)
            if answer is not None:
                self.c.checker.schedule(answer, recorded)

    async def _run_sharded(self, ticket: Ticket, params: ChatParams) -> AsyncGenerator[Piece, None]:
        """A sharded model: the coordinator drives a chain of nodes (failover happens inside)."""
        assert self.c.sharded_chat is not None
        ticket.node_id, ticket.model = "", params.model
        try:
            async for d in self.c.sharded_chat.stream(ticket.key_id, params.model, params.order):
                if d.text:
                    ticket.delivered(d.text, 1, self.c.clock())
                if d.finish_reason is not None:
                    ticket.finished, ticket.outcome = True, d.finish_reason
                    ticket.reported_prompt, ticket.reported_completion = d.prompt_tokens, d.completion_tokens
                    prompt, completion = ticket.charge()
                    self.c.counters.chat_completions += 1
                    yield Piece(
                        d.text, d.finish_reason, prompt, completion, request_id=ticket.id, model=params.model
                    )
                    return
                yield Piece(d.text)
        except Unavailable as exc:
            ticket.outcome = "unavailable"
            yield Piece(error=exc)
        finally:
            self.c.meter.finish(ticket)


class StallGuardedStream(StreamingResponse):
    """A streaming response that gives up on a client that stops reading.

    A client that stops reading (but keeps its connection) would otherwise hold its
    node's generation, its key's concurrency slot and its credit hold for as long as it
    likes: each write waits on TCP flow control. After ``stall_s`` seconds without a
    write getting through, the stream is closed — which ends the generation on the node
    and settles what was delivered — and the connection is dropped.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        stall_s: float,
        on_stall: Callable[[], object],
        **kw: Any,
    ) -> None:
        super().__init__(content, **kw)
        self._content = content
        self._stall_s = stall_s
        self._on_stall = on_stall

    async def stream_response(self, send: Send) -> None:
        """Write as usual, but no write may wait longer than ``stall_s``."""

        async def guarded(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self._stall_s)
            except TimeoutError:
                raise _Stalled from None

        try:
            await super().stream_response(guarded)
        except _Stalled:
            log.warning("a chat client stopped reading for %.0f s: closing its stream", self._stall_s)
            self._on_stall()
            await self._content.aclose()


class _Stalled(Exception):
    """A write to the client did not get through in time."""


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
        served += sorted(a for a, targets in s.chat_aliases.items() if set(targets) & set(served))
        data = [
            {"id": m, "object": "model", "created": int(c.started_at), "owned_by": "phage"} for m in served
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request) -> Response:
        """OpenAI-compatible chat; ``stream: true`` answers with server-sent events."""
        return await serve(request, parse_chat)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(request: Request) -> Response:
        """OpenAI-compatible text completion (a raw prompt, no chat template); SSE with ``stream: true``."""
        return await serve(request, parse_completion)

    async def serve(request: Request, parse: Callable[..., ChatParams]) -> Response:
        try:
            who = await c.keys.authenticate(request.headers.get("authorization"))
            params = parse(
                await read_json(request),
                max_tokens_limit=s.chat_max_tokens,
                default_max_tokens=s.chat_default_max_tokens,
            )
            sharded = c.sharded.has(params.model)
            if sharded:
                c.sharded.require_ready(params.model)  # 503 naming the blocks no node holds
            named = [params.model, *s.chat_aliases.get(params.model, [])]
            served_now = [m for m in named if service.candidates(m)]
            if served_now and params.order.extras_json:
                honoured = [m for m in served_now if service.candidates(m, passthrough=True)]
                if not honoured:
                    asked = next(iter(json.loads(params.order.extras_json)))
                    raise InvalidInput(
                        f"{asked} is not supported by the engines serving {params.model!r} "
                        "(only OpenAI-compatible servers such as vLLM and llama.cpp honour it)",
                        field=asked,
                    )
                served_now = honoured
            if served_now:  # the first served model answers; the rest are its fallbacks, in order
                params = dataclasses.replace(params, model=served_now[0], fallbacks=tuple(served_now[1:]))
            elif not sharded:
                if set(named) & c.chat_withheld_models():
                    raise Unavailable(
                        f"only untrusted nodes serve {params.model!r} now, and this pool does not send "
                        "prompts to untrusted nodes (a stranger's machine would see them); try again when "
                        "a trusted node serves it, or an operator can opt in with chat_untrusted_nodes",
                        field="model",
                    )
                served = sorted({m for live in c.chat_nodes() for m in live.models()})
                raise NotFound(
                    f"the model {params.model!r} does not exist or no live node serves it "
                    f"(served: {', '.join(served) or 'none'})",
                    field="model",
                )
            tickets: list[Ticket] = []
            try:
                for _ in range(params.n):
                    tickets.append(await service.admit(who, params, params.kind))
            except PhageError:
                for t in tickets:  # all choices or none: give back what was admitted
                    t.outcome = "refused"
                    c.meter.finish(t)
                raise
        except PhageError as exc:
            return openai_error(exc)
        ticket = tickets[0]
        prefix = "chatcmpl" if params.kind == "chat" else "cmpl"
        cid = f"{prefix}-{int(time.time() * 1000):x}{id(params) & 0xFFFFFF:06x}"
        created = int(time.time())
        extend = request.headers.get(EXTENSIONS_HEADER, "").strip().lower() in ("1", "true", "phage")
        if params.n > 1:
            return await _choices(service, tickets, cid, created, params, extend)
        pieces = service.run(ticket, params)
        if params.stream:
            # Place the chat now, so the order travels to the node while the response is set up.
            head = asyncio.ensure_future(anext(pieces, None))
            # A request the node refuses outright (a prompt longer than the model's context) must
            # get its 400, not a 200 stream with an error event: wait for the first piece, which
            # is that refusal or the first token.
            await asyncio.wait([head])
            first = None if head.cancelled() or head.exception() is not None else head.result()
            if first is not None and isinstance(first.error, InvalidInput):
                await pieces.aclose()
                return openai_error(first.error)
            return StallGuardedStream(
                _stream(pieces, head, cid, created, params, extend),
                stall_s=s.chat_client_stall_s,
                on_stall=functools.partial(setattr, ticket, "outcome", "client_stalled"),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            return await _complete(pieces, cid, created, params, extend)
        finally:
            await pieces.aclose()


async def _complete(
    pieces: AsyncGenerator[Piece, None], cid: str, created: int, params: ChatParams, extend: bool
) -> Response:
    """A non-streaming answer: gather the pieces into one chat.completion."""
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
                    "object": "chat.completion" if params.kind == "chat" else "text_completion",
                    "created": created,
                    "model": p.model or params.model,
                    "choices": [_choice(params, "".join(text), p.finish_reason, tool_calls=p.tool_calls)],
                    "usage": _usage(p),
                    **_extension(p, extend),
                },
                headers={"X-Phage-Node": p.node_id, "X-Phage-Request": p.request_id},
            )
    return openai_error(Unavailable("the chat ended without an answer"))


async def _choices(
    service: ChatService, tickets: list[Ticket], cid: str, created: int, params: ChatParams, extend: bool
) -> Response:
    """``n`` > 1: each choice is its own generation (seeded ``seed + i`` when a seed was given)."""

    async def one(i: int, ticket: Ticket) -> tuple[str, Piece]:
        order = type(params.order)()
        order.CopyFrom(params.order)
        if order.has_seed:
            order.seed = (order.seed + i + 2**63) % 2**64 - 2**63
        pieces = service.run(ticket, dataclasses.replace(params, order=order))
        text: list[str] = []
        try:
            async for p in pieces:
                if p.error is not None:
                    return "", p
                if p.reset:
                    text.clear()
                text.append(p.text)
                if p.finish_reason:
                    return "".join(text), p
        finally:
            await pieces.aclose()
        return "", Piece(error=Unavailable("the chat ended without an answer"))

    done = await asyncio.gather(*(one(i, t) for i, t in enumerate(tickets)))
    for _, p in done:
        if p.error is not None:
            return openai_error(p.error)
    choices = []
    for i, (text, p) in enumerate(done):
        choice = _choice(params, text, p.finish_reason)
        choice["index"] = i
        choices.append(choice)
    prompt = sum(p.prompt_tokens for _, p in done)  # each choice read the prompt: charged per choice
    completion = sum(p.completion_tokens for _, p in done)
    return JSONResponse(
        {
            "id": cid,
            "object": "chat.completion" if params.kind == "chat" else "text_completion",
            "created": created,
            "model": params.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            **_extension(done[0][1], extend),
        },
        headers={"X-Phage-Node": done[0][1].node_id, "X-Phage-Request": done[0][1].request_id},
    )


def _tool_calls(raw: str) -> list[dict[str, Any]] | None:
    """A node's tool calls, kept only in OpenAI's shape (a list of objects)."""
    if not raw:
        return None
    try:
        calls = json.loads(raw)
    except ValueError:
        return None
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else None


def _choice(
    params: ChatParams,
    text: str,
    finish: str | None,
    *,
    delta: bool = False,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One choice in OpenAI's shape for the endpoint: a chat message (or delta), or completion text."""
    if params.kind != "chat":
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body: dict[str, Any] = {"content": text} if delta else {"role": "assistant", "content": text}
    key = "delta" if delta else "message"
    if tool_calls:
        body["tool_calls"] = tool_calls
        if not text:
            body["content"] = None
    return {"index": 0, key: body, "logprobs": None, "finish_reason": finish}


def _extension(p: Piece, extend: bool) -> dict[str, Any]:
    """phage's opt-in response field: where the answer came from and whether it will be checked."""
    if not extend:
        return {}
    return {
        "phage": {
            "request_id": p.request_id,
            "node_id": p.node_id,
            "check": p.check or "not_checked",
            "check_url": f"/api/usage/requests/{p.request_id}",
        }
    }


def _usage(p: Piece) -> dict[str, int]:
    return {
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.completion_tokens,
        "total_tokens": p.prompt_tokens + p.completion_tokens,
    }


async def _stream(
    pieces: AsyncGenerator[Piece, None],
    first_piece: asyncio.Future[Piece | None],
    cid: str,
    created: int,
    params: ChatParams,
    extend: bool = False,
) -> AsyncGenerator[bytes, None]:
    """OpenAI's chunk stream.

    Leaving early (the client hung up) closes ``pieces``, which cancels the generation on the node.
    """
    kind = "chat.completion.chunk" if params.kind == "chat" else "text_completion"
    head = {"id": cid, "object": kind, "created": created, "model": params.model}
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
                choice = _choice(params, p.text, None, delta=True)
                if first and params.kind == "chat":
                    choice["delta"]["role"] = "assistant"
                first = False
                yield _sse({**head, "choices": [choice]})
            if p.tool_calls:
                calls = [{"index": i, **call} for i, call in enumerate(p.tool_calls)]
                yield _sse({**head, "choices": [_choice(params, "", None, delta=True, tool_calls=calls)]})
            if p.finish_reason:
                last = _choice(params, "", p.finish_reason, delta=True)
                if params.kind == "chat":
                    last["delta"] = {}
                final: dict[str, Any] = {**head, "choices": [last]}
                if not params.include_usage:
                    final["usage"] = _usage(p)  # usage in every stream; OpenAI's own shape when asked for
                final.update(_extension(p, extend))
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
