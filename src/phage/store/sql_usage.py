"""Usage metering, credit balances and key administration (a mixin of :class:`phage.store.sql.SqlStore`).

Three views of the same charges, all written in the one transaction that settles a
request, so they never disagree:

- one row per API key × model × node (``usage``), so ``GET /api/usage`` is a small sum;
- one row per request (``usage_requests``): the per-request log;
- one row per node (``node_accounts``): the tokens its owner has served (their earnings).

Credit is a balance: ``credit_limit_tokens`` (what the key was granted, raised by top-ups)
less ``used_tokens``. A request first *holds* tokens (``reserved_tokens`` and a row in
``credit_holds``) with one compare-and-set ``UPDATE … WHERE used + reserved < limit``, which
is atomic on SQLite and PostgreSQL alike, so concurrent requests — on one coordinator or
several sharing a database — cannot overspend: past the limit by at most one request's hold.
Settling releases the hold and charges what was actually delivered. Holds carry an expiry, so
a coordinator that died mid-request does not freeze a key's credit forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from phage.domain.models import TaskState
from phage.errors import InvalidInput, NotFound
from phage.store.schema import api_keys, credit_holds, node_accounts, tasks, usage, usage_requests
from phage.store.writer import GroupCommitWriter


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Tokens one key spent on one model on one node."""

    key_id: str
    model: str
    node_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One metered request (chat, completion or generate task): what was charged and why."""

    id: str
    key_id: str
    kind: str
    """``chat``, ``completion`` or ``generate``."""
    model: str
    node_id: str
    started_at: float
    duration_s: float
    ttft_s: float | None
    """Time to the first token (streamed requests)."""
    prompt_tokens: int
    completion_tokens: int
    """Charged: what the coordinator saw delivered, capped by what the node reported and max_tokens."""
    reported_tokens: int
    """What the node said it generated (0 when it never said: a stream cut short)."""
    outcome: str
    """The finish reason, or ``client_closed``, ``client_stalled``, ``node_failed``."""
    checked: str = ""
    """Checked chat: empty (not checked), ``pending``, ``pass`` or ``fail``."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens charged."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class NodeAccount:
    """What one node (its owner's account) has served."""

    node_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Hold:
    """Tokens held against a key's credit while a request runs."""

    id: str
    key_id: str
    tokens: int
    """The most the request can cost: held so that no concurrent request can spend it too."""
    needs: int = 1
    """Credit that must be left (after other holds) to admit the request at all."""


@dataclass(frozen=True, slots=True)
class HoldRefused:
    """The key's credit left cannot cover what the request needs: nothing was held."""

    used: int
    """Tokens charged plus tokens held by requests in flight."""
    limit: int


def _bump(conn: Connection, table: sa.Table, keys: dict[str, str], now: float, **add: int) -> None:
    """Add to the counters of the row with these keys, inserting it the first time.

    Writes are serialised by the writer thread, so update-then-insert cannot race.
    """
    where = sa.and_(*(table.c[k] == v for k, v in keys.items()))
    values = {k: table.c[k] + v for k, v in add.items()}
    if conn.execute(table.update().where(where).values(updated_at=now, **values)).rowcount == 0:
        conn.execute(table.insert().values(updated_at=now, **keys, **add))


TASK_HOLD_PREFIX = "g-"
"""A generate task's hold is named after its task (``g-<task id>``), so the task's state says when it ends."""

TASK_HOLD_TTL_S = 7 * 86400.0
"""A generate task's hold outlives any queue wait; it ends with its task (or this long after its submit)."""

TASK_HOLD_GRACE_S = 60.0
"""A task hold whose task is not in the store yet is its submit still being written: kept this long."""


def task_hold_id(task_id: str) -> str:
    """The id of the credit hold of a generate task."""
    return TASK_HOLD_PREFIX + task_id


def _release_expired(conn: Connection, key_id: str, now: float) -> None:
    """Give back the holds of requests a dead coordinator never settled, and of generate tasks that ended.

    A generate task holds its worst case from submit until it is terminal; each of its
    attempts is charged as it reports. Releasing here, by the task's state in the same
    transaction, holds after a coordinator restart too, and costs the dispatch path nothing.
    """
    held = conn.execute(
        sa.select(credit_holds.c.id, credit_holds.c.tokens, credit_holds.c.expires_at).where(
            credit_holds.c.key_id == key_id
        )
    ).all()
    stale = [h for h in held if h.expires_at < now]
    task_ids = {h.id[len(TASK_HOLD_PREFIX) :]: h for h in held if h.id.startswith(TASK_HOLD_PREFIX)}
    if task_ids:
        states = dict(
            conn.execute(sa.select(tasks.c.id, tasks.c.state).where(tasks.c.id.in_(list(task_ids)))).all()
        )
        for tid, h in task_ids.items():
            state = states.get(tid)
            submitted = h.expires_at - TASK_HOLD_TTL_S
            gone = state is None and now - submitted > TASK_HOLD_GRACE_S  # deleted, or never written
            if (gone or (state is not None and TaskState(state).terminal)) and h not in stale:
                stale.append(h)
    if stale:
        conn.execute(credit_holds.delete().where(credit_holds.c.id.in_([h.id for h in stale])))
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id)
            .values(reserved_tokens=api_keys.c.reserved_tokens - sum(h.tokens for h in stale))
        )


def _request(r: sa.Row[Any]) -> RequestRecord:
    return RequestRecord(
        r.id,
        r.key_id,
        r.kind,
        r.model,
        r.node_id,
        r.started_at,
        r.duration_s,
        r.ttft_s,
        int(r.prompt_tokens),
        int(r.completion_tokens),
        int(r.reported_tokens),
        r.outcome,
        r.checked,
    )


class UsageRecords:
    """Usage rows, credit holds, the request log, node accounts and key limits."""

    engine: AsyncEngine
    _writer: GroupCommitWriter

    async def hold_credit(self, hold: Hold, now: float, expires_at: float) -> HoldRefused | None:
        """Hold ``hold.tokens`` of the key's credit if ``hold.needs`` of it is left (else hold nothing).

        Check and hold are one conditional UPDATE, so concurrent requests see each
        other's holds: while one request holds the credit, the next is refused.
        """

        def op(conn: Connection) -> HoldRefused | None:
            _release_expired(conn, hold.key_id, now)
            k = api_keys.c
            room = k.credit_limit_tokens.is_(None) | (
                k.used_tokens + k.reserved_tokens + hold.needs <= k.credit_limit_tokens
            )
            done = conn.execute(
                api_keys.update()
                .where((k.id == hold.key_id) & room)
                .values(reserved_tokens=k.reserved_tokens + hold.tokens)
            )
            if done.rowcount == 0:
                row = conn.execute(
                    sa.select(k.used_tokens, k.reserved_tokens, k.credit_limit_tokens).where(
                        k.id == hold.key_id
                    )
                ).first()
                if row is None:
                    raise NotFound(f"no API key {hold.key_id!r}", field="key_id")
                return HoldRefused(
                    int(row.used_tokens) + int(row.reserved_tokens), int(row.credit_limit_tokens)
                )
            conn.execute(
                credit_holds.insert().values(
                    id=hold.id, key_id=hold.key_id, tokens=hold.tokens, expires_at=expires_at
                )
            )
            return None

        return await self._writer.run(op)

    async def hold_task_credit(self, holds: list[Hold], now: float) -> HoldRefused | None:
        """Hold each generate task's worst case, all or none (``hold.id`` is :func:`task_hold_id`).

        Each is admitted like a chat request (while the credit left after the holds before
        it covers its ``needs``), so of a batch on a key with little left at most one task
        crosses the limit; when one is refused, none is held and nothing is written.
        """

        def op(conn: Connection) -> HoldRefused | None:
            if not holds:
                return None
            key_id = holds[0].key_id
            _release_expired(conn, key_id, now)
            k = api_keys.c
            row = conn.execute(
                sa.select(k.used_tokens, k.reserved_tokens, k.credit_limit_tokens).where(k.id == key_id)
            ).first()
            if row is None:
                raise NotFound(f"no API key {key_id!r}", field="key_id")
            used, reserved = int(row.used_tokens), int(row.reserved_tokens)
            limit = row.credit_limit_tokens
            taken = 0
            for hold in holds:
                if limit is not None and used + reserved + taken + hold.needs > int(limit):
                    return HoldRefused(used + reserved + taken, int(limit))
                taken += hold.tokens
            conn.execute(
                api_keys.update().where(k.id == key_id).values(reserved_tokens=k.reserved_tokens + taken)
            )
            conn.execute(
                credit_holds.insert(),
                [
                    {"id": h.id, "key_id": h.key_id, "tokens": h.tokens, "expires_at": now + TASK_HOLD_TTL_S}
                    for h in holds
                ],
            )
            return None

        return await self._writer.run(op)

    async def settle(self, hold_id: str | None, rec: RequestRecord, now: float) -> None:
        """Release a request's hold (if any) and charge what it used, in every view, in one transaction."""

        def op(conn: Connection) -> None:
            held = 0
            if hold_id is not None:
                row = conn.execute(
                    sa.select(credit_holds.c.tokens).where(credit_holds.c.id == hold_id)
                ).first()
                if row is not None:  # gone when it expired and was released meanwhile
                    held = int(row.tokens)
                    conn.execute(credit_holds.delete().where(credit_holds.c.id == hold_id))
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == rec.key_id)
                .values(
                    used_tokens=api_keys.c.used_tokens + rec.total_tokens,
                    reserved_tokens=api_keys.c.reserved_tokens - held,
                )
            )
            if rec.node_id:  # a request no node took charges nothing anywhere
                tokens = {"prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens}
                keys = {"key_id": rec.key_id, "model": rec.model, "node_id": rec.node_id}
                _bump(conn, usage, keys, now, requests=1, **tokens)
                _bump(conn, node_accounts, {"node_id": rec.node_id}, now, requests=1, **tokens)
            conn.execute(
                usage_requests.insert().values(
                    id=rec.id,
                    key_id=rec.key_id,
                    kind=rec.kind,
                    model=rec.model,
                    node_id=rec.node_id,
                    started_at=rec.started_at,
                    duration_s=rec.duration_s,
                    ttft_s=rec.ttft_s,
                    prompt_tokens=rec.prompt_tokens,
                    completion_tokens=rec.completion_tokens,
                    reported_tokens=rec.reported_tokens,
                    outcome=rec.outcome,
                    checked=rec.checked,
                )
            )

        await self._writer.run(op)

    async def set_checked(self, request_id: str, verdict: str) -> None:
        """Record a checked chat's verdict on its log row."""

        def op(conn: Connection) -> None:
            conn.execute(
                usage_requests.update().where(usage_requests.c.id == request_id).values(checked=verdict)
            )

        await self._writer.run(op)

    async def add_usage(
        self, key_id: str, model: str, node_id: str, prompt_tokens: int, completion_tokens: int, now: float
    ) -> None:
        """Charge one request with no hold and no log row (kept for callers that have neither)."""

        def op(conn: Connection) -> None:
            keys = {"key_id": key_id, "model": model, "node_id": node_id}
            _bump(
                conn,
                usage,
                keys,
                now,
                requests=1,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(used_tokens=api_keys.c.used_tokens + prompt_tokens + completion_tokens)
            )

        await self._writer.run(op)

    async def usage_rows(self, key_id: str | None = None) -> list[UsageRow]:
        """Every usage row, or one key's."""
        q = usage.select().order_by(usage.c.key_id, usage.c.model, usage.c.node_id)
        if key_id is not None:
            q = q.where(usage.c.key_id == key_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(q)
            return [
                UsageRow(r.key_id, r.model, r.node_id, r.requests, r.prompt_tokens, r.completion_tokens)
                for r in rows
            ]

    async def recent_requests(
        self, key_id: str | None, limit: int, before: float | None = None
    ) -> list[RequestRecord]:
        """The newest request log rows first (one key's, or everyone's)."""
        q = usage_requests.select().order_by(usage_requests.c.started_at.desc()).limit(limit)
        if key_id is not None:
            q = q.where(usage_requests.c.key_id == key_id)
        if before is not None:
            q = q.where(usage_requests.c.started_at < before)
        async with self.engine.connect() as conn:
            return [_request(r) for r in await conn.execute(q)]

    async def find_request(self, request_id: str) -> RequestRecord | None:
        """One request log row."""
        async with self.engine.connect() as conn:
            r = (await conn.execute(usage_requests.select().where(usage_requests.c.id == request_id))).first()
        return None if r is None else _request(r)

    async def node_accounts(self) -> list[NodeAccount]:
        """What each node has served, most first."""
        total = node_accounts.c.prompt_tokens + node_accounts.c.completion_tokens
        async with self.engine.connect() as conn:
            rows = await conn.execute(node_accounts.select().order_by(total.desc()))
            return [
                NodeAccount(r.node_id, int(r.requests), int(r.prompt_tokens), int(r.completion_tokens))
                for r in rows
            ]

    async def tokens_used(self, key_id: str) -> int:
        """Prompt + completion tokens a key has been charged in all."""
        q = sa.select(api_keys.c.used_tokens).where(api_keys.c.id == key_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one_or_none() or 0)

    async def top_up(self, key_id: str, tokens: int) -> int:
        """Add ``tokens`` to a key's credit; returns the new limit (unlimited keys have none to top up)."""

        def op(conn: Connection) -> int:
            row = conn.execute(
                sa.select(api_keys.c.credit_limit_tokens).where(api_keys.c.id == key_id)
            ).first()
            if row is None:
                raise NotFound(f"no API key {key_id!r}", field="key_id")
            if row.credit_limit_tokens is None:
                raise InvalidInput(
                    "this key has no credit limit (it is unlimited); set one first with "
                    "'phage keys limit ID TOKENS'",
                    field="tokens",
                )
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(credit_limit_tokens=api_keys.c.credit_limit_tokens + tokens)
            )
            return int(row.credit_limit_tokens) + tokens

        return await self._writer.run(op)

    async def revoke_api_key(self, key_id: str) -> None:
        """Mark a key revoked (it is refused from then on)."""
        await self._update_key(key_id, revoked=True)

    async def set_credit_limit(self, key_id: str, tokens: int | None) -> None:
        """Set a key's credit limit in tokens; ``None`` lifts it."""
        await self._update_key(key_id, credit_limit_tokens=tokens)

    async def set_key_rates(
        self,
        key_id: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        max_concurrent: int | None,
    ) -> None:
        """Set a key's own rate limits (None: the coordinator's default)."""
        await self._update_key(
            key_id,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            max_concurrent=max_concurrent,
        )

    async def _update_key(self, key_id: str, **values: object) -> None:
        def op(conn: Connection) -> None:
            if conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values)).rowcount == 0:
                raise NotFound(f"no API key {key_id!r}", field="key_id")

        await self._writer.run(op)
