"""Database URLs: what a user types (``postgresql://…``, ``sqlite:///…``) → the drivers phage runs.

A store holds two engines over one database: an async one for reads and a sync one
for the group-commit writer thread (``store/writer.py``). For PostgreSQL that is
asyncpg for reads (the fastest asyncio driver) and psycopg 3 for the writer; both
come with the ``phage[postgres]`` extra. A URL naming either driver explicitly is
accepted too, so a user may pick a driver and phage derives the other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from phage.errors import InvalidInput

_POSTGRES_PREFIXES = ("postgresql", "postgres")
_SQLITE_PREFIXES = ("sqlite",)


@dataclass(frozen=True, slots=True)
class DatabaseUrls:
    """The two driver URLs of one database."""

    async_url: str
    """For the async engine (reads, LISTEN)."""
    sync_url: str
    """For the writer thread."""
    postgres: bool
    dsn: str = ""
    """PostgreSQL only: the plain ``postgresql://`` URL a driver takes directly (replica signals)."""


def _split(url: str) -> tuple[str, str, str]:
    """``scheme+driver://rest`` → (scheme, driver, rest)."""
    head, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput(
            "database URL must look like postgresql://user@host:port/db or sqlite:///path",
            field="database_url",
        )
    scheme, _, driver = head.partition("+")
    return scheme.lower(), driver.lower(), rest


def database_urls(url: str) -> DatabaseUrls:
    """Both driver URLs for ``url``; refuses an unknown database or a missing driver, naming the fix."""
    scheme, _driver, rest = _split(url)
    if scheme in _SQLITE_PREFIXES:
        return DatabaseUrls(f"sqlite+aiosqlite://{rest}", f"sqlite://{rest}", postgres=False)
    if scheme in _POSTGRES_PREFIXES:
        missing = [m for m in ("asyncpg", "psycopg") if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInput(
                f"PostgreSQL needs the drivers {', '.join(missing)}: pip install 'phage[postgres]'",
                field="database_url",
            )
        return DatabaseUrls(
            f"postgresql+asyncpg://{rest}",
            f"postgresql+psycopg://{rest}",
            postgres=True,
            dsn=f"postgresql://{rest}",
        )
    raise InvalidInput(
        f"unsupported database {scheme!r}: phage runs on sqlite or postgresql", field="database_url"
    )


def redact(url: str) -> str:
    """The URL with any password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
