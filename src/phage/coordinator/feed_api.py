"""``WS /api/feed``: live events, each subscriber seeing only what its key may see.

* A user key sees events of its own tasks; node events (and anything else) are for admins.
  Task events carry the task's owner from submission on; for tasks the feed has not seen
  submitted, the owner is looked up once and remembered (:class:`TaskOwners`).
* A socket re-checks its key whenever any key is revoked or changed (and every
  ``RECHECK_S`` for changes made by another coordinator), and is closed with ``4401`` at once
  when its key no longer authenticates.
* Browsers cannot set headers on a WebSocket, and an API key in a URL ends up in logs and
  history; so ``POST /api/feed/ticket`` (with the key in the header) hands out a ticket —
  random, single use, valid for ``TICKET_TTL_S`` — that opens the socket as ``?ticket=``.
  Other clients may send ``Authorization: Bearer`` on the upgrade request itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from phage import __version__
from phage.coordinator.feed import Event, EventBus
from phage.coordinator.keys import ApiKeys, Principal
from phage.errors import RateLimited, Unauthenticated

TICKET_TTL_S = 30.0
MAX_TICKETS = 10_000
RECHECK_S = 10.0
MAX_OWNERS = 200_000
UNAUTHORIZED = 4401


@dataclass(frozen=True, slots=True)
class _Ticket:
    authorization: str
    expires: float


class FeedTickets:
    """Single-use, short-lived tickets that stand for an API key when opening the feed.

    Held in this coordinator's memory only: a ticket opens the feed on the coordinator that
    issued it (a browser asks the one it is talking to).
    """

    def __init__(
        self,
        *,
        ttl_s: float = TICKET_TTL_S,
        limit: int = MAX_TICKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._tickets: OrderedDict[str, _Ticket] = OrderedDict()

    def issue(self, authorization: str) -> str:
        """A new ticket for an already authenticated ``Authorization`` header."""
        now = self._clock()
        while self._tickets and next(iter(self._tickets.values())).expires <= now:
            self._tickets.popitem(last=False)
        if len(self._tickets) >= self._limit:
            raise RateLimited(
                f"{self._limit} feed tickets are outstanding; retry in a few seconds",
                field="ticket",
                retry_after_s=self.ttl_s,
            )
        ticket = f"pft_{secrets.token_urlsafe(24)}"
        self._tickets[ticket] = _Ticket(authorization, now + self.ttl_s)
        return ticket

    def redeem(self, ticket: str) -> str:
        """The ``Authorization`` a ticket stands for; the ticket is spent either way."""
        held = self._tickets.pop(ticket, None)
        if held is None or held.expires <= self._clock():
            raise Unauthenticated("feed ticket is unknown, used or expired", field="ticket")
        return held.authorization


class TaskOwners:
    """Which key owns each task, learned from the feed's own events, else asked of the store once."""

    def __init__(self, lookup: Callable[[str], Awaitable[str | None]], limit: int = MAX_OWNERS) -> None:
        self._lookup = lookup
        self._limit = limit
        self._owners: OrderedDict[str, str] = OrderedDict()

    def learn(self, task_id: str, owner: str) -> None:
        """Remember an owner seen on an event."""
        self._owners[task_id] = owner
        self._owners.move_to_end(task_id)
        while len(self._owners) > self._limit:
            self._owners.popitem(last=False)

    async def owner(self, task_id: str) -> str | None:
        """The owning key's id, or None for a task that no longer exists."""
        known = self._owners.get(task_id)
        if known is None:
            known = await self._lookup(task_id)
            if known is not None:
                self.learn(task_id, known)
        return known


async def visible(event: Event, who: Principal, owners: TaskOwners) -> bool:
    """May ``who`` see ``event``? Admins see all; users their own tasks and the feed's own notices."""
    kind = event.get("type")
    if kind == "task":
        task_id = str(event.get("id", ""))
        owner = event.get("owner")
        if isinstance(owner, str):
            owners.learn(task_id, owner)
        else:
            owner = await owners.owner(task_id)
        return who.is_admin or owner == who.key_id
    if kind == "lagged":
        return True
    return who.is_admin


async def _until_closed(ws: WebSocket) -> None:
    """Return once the client disconnects; messages it sends are ignored."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


def install_feed(
    app: FastAPI,
    *,
    bus: EventBus,
    keys: ApiKeys,
    owner_of: Callable[[str], Awaitable[str | None]],
    tickets: FeedTickets | None = None,
) -> FeedTickets:
    """Add ``WS /api/feed`` and ``POST /api/feed/ticket`` to ``app``."""
    tickets = tickets or FeedTickets()
    owners = TaskOwners(owner_of)

    @app.post("/api/feed/ticket", tags=["feed"])
    async def feed_ticket(request: Request) -> dict[str, Any]:
        """A single-use ticket, valid for a few seconds, that opens ``WS /api/feed?ticket=…``."""
        authorization = request.headers.get("authorization")
        await keys.authenticate(authorization)
        assert authorization is not None
        return {"ticket": tickets.issue(authorization), "expires_in_s": tickets.ttl_s}

    @app.websocket("/api/feed")
    async def feed(ws: WebSocket) -> None:
        """Live events: one JSON message per task or node state change this key may see."""
        try:
            ticket = ws.query_params.get("ticket")
            authorization = tickets.redeem(ticket) if ticket else ws.headers.get("authorization")
            who = await keys.authenticate(authorization)
        except Unauthenticated as exc:
            # accepted first so that the client sees why (a refused handshake is a bare 403)
            await ws.accept()
            await ws.close(code=UNAUTHORIZED, reason=exc.message)
            return
        await ws.accept()
        async with bus.subscribe() as sub:
            await ws.send_json({"type": "hello", "version": __version__, "role": who.role})
            gone: asyncio.Future[Any] = asyncio.ensure_future(_until_closed(ws))
            nxt: asyncio.Future[Any] = asyncio.ensure_future(sub.next())
            changed: asyncio.Future[Any] = asyncio.ensure_future(keys.changed())
            try:
                while True:
                    done, _ = await asyncio.wait(
                        {nxt, gone, changed}, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    if gone in done:
                        return
                    if changed in done or not done:
                        try:
                            await keys.authenticate(authorization)
                        except Unauthenticated as exc:
                            await ws.close(code=UNAUTHORIZED, reason=exc.message)
                            return
                        if changed in done:
                            changed = asyncio.ensure_future(keys.changed())
                    if nxt in done:
                        event: Event = nxt.result()
                        nxt = asyncio.ensure_future(sub.next())
                        if await visible(event, who, owners):
                            await ws.send_json(event)
            except (WebSocketDisconnect, RuntimeError):
                return
            finally:
                for fut in (gone, nxt, changed):
                    fut.cancel()

    return tickets
