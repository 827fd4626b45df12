"""Signals between coordinator replicas on one PostgreSQL database: LISTEN/NOTIFY, and one leader.

Replicas share every durable fact through the database, but some things must also
*happen* on every replica at once: a node long-polling replica A must wake when a
task is submitted to replica B; a feed subscriber on A must see B's events. Each
replica keeps one dedicated connection that ``LISTEN``s on one channel; a replica
publishes with ``pg_notify``, and every replica (itself excepted) receives the
message within milliseconds. Messages are small JSON objects
(:class:`Signal`); PostgreSQL caps a payload at 8,000 bytes, so long id lists are
split. A notification sent while a replica's listener is reconnecting is lost to
it, which is why replicas also re-read what matters from the store on a timer
(the signals make things fast; the store keeps them right).

The same connection holds a session-level advisory lock for the replica that is
*leader*: the one that sweeps the store for silent nodes and lapsed leases, so
each is handled once. When the leader dies its connection closes, PostgreSQL
releases the lock, and another replica takes it on its next try.

With SQLite there is one coordinator: :class:`LocalSignals` delivers nothing and
always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from phage.domain.ids import new_id

log = logging.getLogger("phage.store.signals")

CHANNEL = "phage_replicas"
LEADER_LOCK = 0x70686167  # "phag": the advisory lock key the leader holds
MAX_PAYLOAD = 7_000
"""Bytes per notification, under PostgreSQL's 8,000 with room for the envelope."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One message from one replica to the others."""

    kind: str
    """``queued`` (task ids wanting attempts), ``event`` (a feed event), ``nodes`` (node rows changed),
    ``keys`` (API keys changed), ``cancel`` (attempt ids to stop)."""
    origin: str
    """The sending replica's id."""
    data: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Signal], None]


class Signals(Protocol):
    """What the coordinator needs from its fellow replicas."""

    replica_id: str

    @property
    def leader(self) -> bool:
        """True while this replica holds the leader lock."""

    async def start(self, handler: Handler) -> None:
        """Begin listening; ``handler`` gets every other replica's signals."""

    async def publish(self, kind: str, **data: Any) -> None:
        """Send a signal to every other replica (best effort)."""

    async def publish_ids(self, kind: str, ids: Sequence[str]) -> None:
        """Send a list of ids, split to fit the payload limit."""

    async def stop(self) -> None:
        """Stop listening and give up leadership."""


class LocalSignals:
    """One coordinator alone (SQLite): nobody to tell, and always the leader."""

    def __init__(self) -> None:
        self.replica_id = new_id("r")

    @property
    def leader(self) -> bool:
        """Always: there is no other replica."""
        return True

    async def start(self, handler: Handler) -> None:
        """Nothing to listen to."""

    async def publish(self, kind: str, **data: Any) -> None:
        """Nobody to tell."""

    async def publish_ids(self, kind: str, ids: Sequence[str]) -> None:
        """Nobody to tell."""

    async def stop(self) -> None:
        """Nothing to stop."""


class PostgresSignals:
    """LISTEN/NOTIFY and the leader lock over one dedicated asyncpg connection (reconnected if lost)."""

    def __init__(self, dsn: str, *, retry_s: float = 0.5) -> None:
        self.replica_id = new_id("r")
        self._dsn = dsn
        self._retry_s = retry_s
        self._conn: Any = None
        self._handler: Handler | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._busy = asyncio.Lock()
        """asyncpg runs one statement at a time per connection: publishing and lock tries take turns."""
        self._leader = False
        self.received = 0
        self.lock_tries = 0

    @property
    def leader(self) -> bool:
        """True while this replica holds the leader lock on a live connection."""
        return self._leader and self._conn is not None and not self._conn.is_closed()

    async def start(self, handler: Handler) -> None:
        """Connect, LISTEN, try for the leader lock; keep doing so in the background."""
        self._handler = handler
        with contextlib.suppress(Exception):  # the database may be away: the loop keeps trying
            await self._connect()
        self._task = asyncio.create_task(self._keep(), name="phage-replica-signals")

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn, timeout=10)
        conn.add_termination_listener(lambda _c: self._lost.set())
        await conn.add_listener(CHANNEL, self._on_notify)
        self._conn = conn
        self._lost.clear()
        await self._try_lead()

    async def _try_lead(self) -> None:
        if self._conn is not None and not self._leader:
            self.lock_tries += 1
            async with self._busy:
                self._leader = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK))
            if self._leader:
                log.info("replica %s leads the liveness sweep", self.replica_id)

    async def _keep(self) -> None:
        """Reconnect when the connection drops; retry the leader lock while another replica holds it."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._retry_s)
            try:
                if self._conn is None or self._conn.is_closed():
                    self._leader = False
                    self._conn = None
                    await self._connect()
                else:
                    await self._try_lead()
            except Exception as exc:  # the database is away: try again shortly
                log.debug("replica signals: %s", exc)
                self._leader = False
                self._conn = None
                self._lost.set()
                await asyncio.sleep(self._retry_s)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            raw = json.loads(payload)
            signal = Signal(str(raw["k"]), str(raw["o"]), dict(raw.get("d") or {}))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed replica signal")
            return
        if signal.origin == self.replica_id or self._handler is None:
            return
        self.received += 1
        try:
            self._handler(signal)
        except Exception:  # one bad handler call must not end the listener
            log.exception("replica signal %s failed", signal.kind)

    async def publish(self, kind: str, **data: Any) -> None:
        """NOTIFY the other replicas; dropped (with a debug line) while the connection is down."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        payload = json.dumps({"k": kind, "o": self.replica_id, "d": data}, separators=(",", ":"))
        try:
            async with self._busy:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except Exception as exc:
            log.warning("could not signal %s to the other replicas: %s", kind, exc)

    async def publish_ids(self, kind: str, ids: Sequence[str]) -> None:
        """Send ids in as many notifications as the payload limit needs."""
        batch: list[str] = []
        size = 0
        for item in ids:
            if batch and size + len(item) + 3 > MAX_PAYLOAD:
                await self.publish(kind, ids=batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item) + 3
        if batch:
            await self.publish(kind, ids=batch)

    async def stop(self) -> None:
        """Close the connection (which releases the leader lock)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=5)
        self._conn = None
        self._leader = False
