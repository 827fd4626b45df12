"""Fixtures every suite shares: the database backends the store and the coordinator run on.

``PHAGE_TEST_DB`` picks the backends: ``sqlite``, ``postgresql`` or ``both`` (the
default, and what CI runs). A test that takes ``database_url`` runs once per
backend; on PostgreSQL each test gets a fresh database on one server per test
session (``phage.testing_postgres``), started from the operating system's package.
When PostgreSQL is asked for but not installed the tests fail, naming the fix: a
backend never silently drops out of the run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from phage.store import SqlStore, sqlite_url
from phage.testing_postgres import PostgresServer


def selected_backends() -> list[str]:
    """The backends this run covers (``PHAGE_TEST_DB``)."""
    choice = os.environ.get("PHAGE_TEST_DB", "both").strip().lower()
    if choice == "both":
        return ["sqlite", "postgresql"]
    if choice in ("sqlite", "postgresql"):
        return [choice]
    raise pytest.UsageError(f"PHAGE_TEST_DB must be sqlite, postgresql or both, not {choice!r}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=selected_backends())
def db_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: the test runs once per selected backend."""
    return str(request.param)


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the test's backend."""
    if db_backend == "sqlite":
        return sqlite_url(tmp_path / "phage.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
async def sql_store(database_url: str) -> AsyncIterator[SqlStore]:
    """An open store on a fresh database of the test's backend."""
    store = SqlStore(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
