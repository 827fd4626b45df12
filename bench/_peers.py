"""The peer queues bench/dispatch.py runs beside phage: huey on SQLite and arq on Redis.

This module is imported by name (``_peers``) both by the benchmark and by the
peers' own worker commands (``huey_consumer _peers.huey``, ``arq
_peers.ArqWorker``), so that task names agree on both sides. The worker
processes learn where their queue lives from environment variables.
"""

from __future__ import annotations

import os
import time
from typing import Any

from huey import SqliteHuey
from huey.storage import SqliteStorage

HUEY_DB_ENV = "BENCH_HUEY_DB"
HUEY_SYNC_ENV = "BENCH_HUEY_SYNC"
ARQ_PORT_ENV = "BENCH_ARQ_PORT"
ARQ_MAX_JOBS_ENV = "BENCH_ARQ_MAX_JOBS"
ARQ_POLL_ENV = "BENCH_ARQ_POLL_DELAY"


class NormalSyncSqliteStorage(SqliteStorage):
    """huey's SQLite storage with ``PRAGMA synchronous=NORMAL`` (phage's setting) instead of the default.

    In WAL mode NORMAL keeps every commit across a process crash but may lose
    the last ones on power loss; huey's default (FULL) fsyncs every commit.
    """

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


def make_huey(db_path: str, sync: str = "default") -> tuple[SqliteHuey, Any]:
    """A SqliteHuey on ``db_path`` and its no-op task (which returns its finish time)."""
    kwargs: dict[str, Any] = {}
    if sync == "normal":
        kwargs["storage_class"] = NormalSyncSqliteStorage
    elif sync != "default":
        raise ValueError(f"huey sync mode must be 'default' or 'normal', not {sync!r}")
    app = SqliteHuey("bench", filename=db_path, **kwargs)

    @app.task(name="noop")
    def noop() -> float:
        return time.time()

    return app, noop


_huey_app: SqliteHuey | None = None


def __getattr__(name: str) -> Any:
    """``_peers.huey`` for ``huey_consumer``: built from the environment on first access."""
    global _huey_app
    if name == "huey":
        if _huey_app is None:
            _huey_app, _ = make_huey(os.environ[HUEY_DB_ENV], os.environ.get(HUEY_SYNC_ENV, "default"))
        return _huey_app
    raise AttributeError(name)


async def arq_noop(ctx: dict[str, Any]) -> None:
    """arq's no-op job (arq records its finish time in the job result)."""
    return None


def _arq_settings() -> Any:
    from arq.connections import RedisSettings

    return RedisSettings(host="127.0.0.1", port=int(os.environ.get(ARQ_PORT_ENV, "6379")))


class ArqWorker:
    """arq worker settings (``arq _peers.ArqWorker``)."""

    functions = [arq_noop]
    redis_settings = _arq_settings()
    max_jobs = int(os.environ.get(ARQ_MAX_JOBS_ENV, "10"))
    poll_delay = float(os.environ.get(ARQ_POLL_ENV, "0.01"))
    keep_result = 3600
    handle_signals = True
