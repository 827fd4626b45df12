"""API keys: ``Authorization: Bearer phk_…``; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from phage.domain.ids import new_id
from phage.errors import PermissionDenied, Unauthenticated
from phage.store import SqlStore
from phage.store.base import ApiKeyRecord
from phage.store.sql_usage import UsageRow

ROLES = ("admin", "user")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the HTTP API."""

    key_id: str
    name: str
    role: str
    credit_limit_tokens: int | None = None

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

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._cache: dict[str, ApiKeyRecord] = {}

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
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        return secret

    def forget(self) -> None:
        """Drop cached lookups (after a key was revoked or changed)."""
        self._cache.clear()

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
        return Principal(record.id, record.name, record.role, record.credit_limit_tokens)

    async def all(self) -> list[ApiKeyRecord]:
        """Every key, without secrets."""
        return await self._store.list_api_keys()

    async def set_credit_limit(self, key_id: str, limit: int | None) -> None:
        """Set (or lift, with None) a key's credit limit in tokens."""
        await self._store.set_credit_limit(key_id, limit)
        self.forget()

    async def revoke(self, key_id: str) -> None:
        """Refuse the key from the next request on."""
        await self._store.revoke_api_key(key_id)
        self.forget()

    async def usage(self, key_id: str | None) -> tuple[list[UsageRow], dict[str, ApiKeyRecord]]:
        """Usage rows (one key's, or everyone's with None) and every key by id."""
        rows = await self._store.usage_rows(key_id)
        return rows, {k.id: k for k in await self._store.list_api_keys()}

    async def tokens_used(self, key_id: str) -> int:
        """Tokens the key has used in all."""
        return await self._store.tokens_used(key_id)

    async def add_usage(
        self, key_id: str, model: str, node_id: str, prompt: int, completion: int, now: float
    ) -> None:
        """Meter one chat completion against the key."""
        await self._store.add_usage(key_id, model, node_id, prompt, completion, now)
