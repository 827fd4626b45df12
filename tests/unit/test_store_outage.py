"""Which failures mean "the database is away" (503, retry) and which stay what they are."""

from __future__ import annotations

import sqlalchemy.exc as sa_exc

from phage.errors import StoreUnavailable
from phage.store.outage import is_unreachable


def _wrapped(cls: type[sa_exc.DBAPIError], orig: Exception) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, orig)


def test_connection_failures_are_outages() -> None:
    assert is_unreachable(ConnectionRefusedError(111, "Connect call failed"))
    assert is_unreachable(TimeoutError())
    assert is_unreachable(_wrapped(sa_exc.OperationalError, Exception("connection refused")))
    assert is_unreachable(_wrapped(sa_exc.InterfaceError, Exception("connection is closed")))
    invalidated = _wrapped(sa_exc.DBAPIError, Exception("terminating connection"))
    invalidated.connection_invalidated = True
    assert is_unreachable(invalidated)


def test_refused_statements_and_bugs_are_not() -> None:
    assert not is_unreachable(_wrapped(sa_exc.IntegrityError, Exception("duplicate key")))
    assert not is_unreachable(_wrapped(sa_exc.ProgrammingError, Exception("syntax error")))
    assert not is_unreachable(ValueError("bug"))
    assert not is_unreachable(StoreUnavailable("already said"))


def test_an_outage_wrapped_several_layers_deep_is_found() -> None:
    import asyncpg.exceptions

    adapter = RuntimeError("the database system is shutting down")  # a driver adapter's own error type
    adapter.__cause__ = asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
    assert is_unreachable(_wrapped(sa_exc.DBAPIError, adapter))
    refused = RuntimeError("duplicate key")
    refused.__cause__ = ValueError("not an outage")
    assert not is_unreachable(_wrapped(sa_exc.DBAPIError, refused))
