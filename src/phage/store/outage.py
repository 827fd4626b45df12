"""Telling "the database is away" apart from every other failure, and saying so as one error.

While PostgreSQL is stopped or restarting, every store call fails — the async
driver (asyncpg) with its own exceptions or a bare ``ConnectionRefusedError``, the
writer's driver (psycopg) wrapped by SQLAlchemy. Left alone they surface as 500s
and unexplained gRPC failures. The store converts exactly these into
:class:`phage.errors.StoreUnavailable` (HTTP 503 with ``Retry-After``, gRPC
``UNAVAILABLE``, which nodes retry with backoff), so callers learn "try again
shortly" and nothing else changes: a constraint violation or a bug stays what it is.
Recovery needs no action: the engines test each pooled connection before use
(``pool_pre_ping``) and replace the dead ones once the server answers again.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy.exc as sa_exc

from phage.errors import StoreUnavailable

log = logging.getLogger("phage.store")

C = TypeVar("C", bound=type)

try:  # the PostgreSQL extra; SQLite-only installs go without it
    import asyncpg.exceptions as _apg

    _DRIVER_UNREACHABLE: tuple[type[BaseException], ...] = (
        _apg.PostgresConnectionError,
        _apg.CannotConnectNowError,
        _apg.OperatorInterventionError,
        _apg.InterfaceError,
    )
except ImportError:  # pragma: no cover - depends on the install
    _DRIVER_UNREACHABLE = ()


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached now (as opposed to refusing a statement).

    Drivers wrap each other (SQLAlchemy around its asyncpg adapter around asyncpg's own error), so the
    whole chain of causes is read: "the database system is shutting down" arrives three layers deep.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen or isinstance(e, StoreUnavailable):
            continue
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError):
            if e.connection_invalidated or isinstance(e, sa_exc.OperationalError | sa_exc.InterfaceError):
                return True
            if e.orig is not None:
                todo.append(e.orig)
        elif isinstance(e, (OSError, TimeoutError, sa_exc.TimeoutError, *_DRIVER_UNREACHABLE)):
            return True
        if e.__cause__ is not None:
            todo.append(e.__cause__)
    return False


def _guard(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            log.warning("database unreachable during %s: %s", fn.__name__, exc)
            raise StoreUnavailable("the database cannot be reached; retry shortly") from exc

    return call


def reports_outages(cls: C) -> C:
    """Class decorator: every public coroutine method raises StoreUnavailable when the database is away."""
    for name, member in inspect.getmembers(cls, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            setattr(cls, name, _guard(member))
    return cls
