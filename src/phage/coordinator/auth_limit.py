"""Throttle API-key guessing: a source whose requests keep failing authentication waits.

An ASGI middleware in front of every route (REST, OpenAI-compatible, pool API, the feed), so
no route can forget it: each ``401`` answer (or WebSocket close with ``4401``) spends one of
the source address's tokens (:class:`~phage.coordinator.ratelimit.RateLimiter`); while a
source has none left, its requests are answered ``429`` with ``Retry-After`` before any
route or key lookup runs. Requests that authenticate cost nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from phage.coordinator.ratelimit import RateLimiter
from phage.errors import RateLimited

UNAUTHENTICATED_WS_CLOSE = 4401
RATE_LIMITED_WS_CLOSE = 4429


class AuthFailureLimit:
    """Answer 429 to sources over their budget of failed authentications."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an over-budget source; otherwise run the app and count its 401s."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        source = str(client[0]) if client else "unknown"
        try:
            self.limiter.check(source)
        except RateLimited as exc:
            await _refuse(scope, send, exc)
            return

        async def counting_send(message: Message) -> None:
            kind = message["type"]
            if (kind == "http.response.start" and message["status"] == 401) or (
                kind == "websocket.close" and message.get("code") == UNAUTHENTICATED_WS_CLOSE
            ):
                self.limiter.charge(source)
            await send(message)

        await self.app(scope, receive, counting_send)


async def _refuse(scope: Scope, send: Send, exc: RateLimited) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": RATE_LIMITED_WS_CLOSE, "reason": exc.message[:120]})
        return
    body: dict[str, Any] = exc.to_dict()
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"retry-after", str(max(1, math.ceil(exc.retry_after_s or 1))).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
