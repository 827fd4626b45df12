"""API keys: ``Authorization: Bearer phk_…``; only their sha256 is stored."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from phage.domain.ids import new_id
from phage.errors import PermissionDenied, Unauthenticated
from phage.pki.ca import write_private
from phage.store import SqlStore
from phage.store.base import ApiKeyRecord
from phage.store.signals import Signals
from phage.store.sql_usage import NodeAccount, RequestRecord, UsageRow

ROLES = ("admin", "user")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the HTTP API."""

    key_id: str
    name: str
    role: str
    credit_limit_tokens: int | None = None
    requests_per_minute: int | None = None
    """This key's own limits; None: the coordinator's defaults."""
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def is_admin(self) -> bool:
        """Admins may act on every task and node."""
        return self.role == "admin"

    def require_admin(self) -> None:
        """Raise unless this caller is an admin."""
        if not self.is_admin:
            raise PermissionDenied("this action needs an admin API key")


def hash_secret(secret: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    """Creates and checks API keys, caching lookups (keys are checked on every request)."""

    def __init__(self, store: SqlStore, signals: Signals | None = None) -> None:
        self._store = store
        self._signals = signals
        """Other coordinator replicas, told to drop their cached lookups when a key changes here."""
        self._cache: dict[str, ApiKeyRecord] = {}
        self._changed = asyncio.Event()

    async def create(self, name: str, role: str, now: float) -> tuple[str, str]:
        """A new key: returns (key id, secret). The secret is shown once."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        key_id = new_id("k")
        secret = f"phk_{secrets.token_urlsafe(32)}"
        await self._store.add_api_key(key_id, hash_secret(secret), name, role, now)
        return key_id, secret

    async def ensure_admin(self, path: Path, now: float) -> str:
        """The admin key written into the data directory on first start."""
        if path.exists():
            return path.read_text().strip()
        _, secret = await self.create("admin", "admin", now)
        write_private(path, secret + "\n")
        return secret

    def forget(self) -> None:
        """Drop cached lookups (after a key was revoked or changed) and wake :meth:`changed` waiters."""
        self._cache.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Return the next time any key is revoked or changed (long-lived sessions re-check theirs)."""
        await self._changed.wait()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``Authorization`` header."""
        if not authorization:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>'", field="Authorization"
            )
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("Authorization must be 'Bearer <key>'", field="Authorization")
        digest = hash_secret(secret.strip())
        record = self._cache.get(digest)
        if record is None:
            record = await self._store.find_api_key(digest)
            if record is not None:  # unknown keys are not cached: guessing must not grow memory
                self._cache[digest] = record
        if record is None or record.revoked:
            raise Unauthenticated("API key is not valid", field="Authorization")
        return Principal(
            record.id,
            record.name,
            record.role,
            record.credit_limit_tokens,
            record.requests_per_minute,
            record.tokens_per_minute,
            record.max_concurrent,
        )

    async def all(self) -> list[ApiKeyRecord]:
        """Every key, without secrets."""
        return await self._store.list_api_keys()

    async def set_credit_limit(self, key_id: str, limit: int | None) -> None:
        """Set (or lift, with None) a key's credit limit in tokens."""
        await self._store.set_credit_limit(key_id, limit)
        await self._note_change()

    async def revoke(self, key_id: str) -> None:
        """Refuse the key from the next request on."""
        await self._store.revoke_api_key(key_id)
        await self._note_change()

    async def _note_change(self) -> None:
        self.forget()
        if self._signals is not None:
            await self._signals.publish("keys")

    async def usage(self, key_id: str | None) -> tuple[list[UsageRow], dict[str, ApiKeyRecord]]:
        """Usage rows (one key's, or everyone's with None) and every key by id."""
        rows = await self._store.usage_rows(key_id)
        return rows, {k.id: k for k in await self._store.list_api_keys()}

    async def top_up(self, key_id: str, tokens: int) -> tuple[int, int]:
        """Add tokens to a key's credit; returns (new limit, tokens used)."""
        limit = await self._store.top_up(key_id, tokens)
        self.forget()
        return limit, await self._store.tokens_used(key_id)

    async def set_rates(
        self,
        key_id: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        max_concurrent: int | None,
    ) -> None:
        """Set a key's own rate limits (None: the coordinator's default)."""
        await self._store.set_key_rates(key_id, requests_per_minute, tokens_per_minute, max_concurrent)
        self.forget()

    async def requests(
        self, key_id: str | None, limit: int, before: float | None = None
    ) -> list[RequestRecord]:
        """The per-request usage log, newest first (one key's, or everyone's with None)."""
        return await self._store.recent_requests(key_id, limit, before)

    async def request(self, request_id: str) -> RequestRecord | None:
        """One request's log row."""
        return await self._store.find_request(request_id)

    async def node_accounts(self) -> list[NodeAccount]:
        """What each node served (its owner's account)."""
        return await self._store.node_accounts()

    async def tokens_used(self, key_id: str) -> int:
        """Tokens the key has used in all."""
        return await self._store.tokens_used(key_id)

    async def add_usage(
        self, key_id: str, model: str, node_id: str, prompt: int, completion: int, now: float
    ) -> None:
        """Meter one chat completion against the key."""
        await self._store.add_usage(key_id, model, node_id, prompt, completion, now)
