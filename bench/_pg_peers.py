"""The PostgreSQL queues ``bench/dispatch.py --postgres`` runs beside phage: procrastinate, and a plain loop.

Imported by name (``_pg_peers``) by the benchmark and by the workers it starts:
``procrastinate --app=_pg_peers.app worker`` and ``python _pg_peers.py
skip-locked …``. Both learn the database from ``BENCH_PG_DSN``.

The plain loop is the queue many teams write by hand instead of adopting a
library: one table, and workers that claim the oldest queued row with
``FOR UPDATE SKIP LOCKED``, run it, and mark it done, each step its own
committed statement (so a job is durable at every step, as phage's are).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import procrastinate

PG_DSN_ENV = "BENCH_PG_DSN"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ.get(PG_DSN_ENV, "")))


@app.task(name="noop")
def noop() -> None:
    """procrastinate's no-op job (its events table records when each started and finished)."""


SKIP_LOCKED_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_jobs (
    id bigserial PRIMARY KEY,
    args jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS bench_jobs_queued ON bench_jobs (id) WHERE status = 'queued';
"""

CLAIM = """
UPDATE bench_jobs SET status = 'running', started_at = clock_timestamp()
WHERE id IN (
    SELECT id FROM bench_jobs WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT %s
)
RETURNING id, args
"""

FINISH = "UPDATE bench_jobs SET status = 'done', finished_at = clock_timestamp() WHERE id = ANY(%s)"


def run_job(args: Any) -> None:
    """The job itself: nothing."""


def skip_locked_worker(dsn: str, batch: int, idle_sleep_s: float) -> None:
    """Claim, run, finish, until SIGTERM; an empty queue is polled every ``idle_sleep_s``."""
    import psycopg

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop:
            rows = conn.execute(CLAIM, (batch,)).fetchall()
            if not rows:
                time.sleep(idle_sleep_s)
                continue
            for _, job_args in rows:
                run_job(job_args)
            conn.execute(FINISH, ([job_id for job_id, _ in rows],))


def main(argv: list[str] | None = None) -> int:
    """``python _pg_peers.py skip-locked --batch 1``: one plain worker process."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("skip-locked",))
    p.add_argument("--batch", type=int, default=1, help="jobs claimed per statement")
    p.add_argument("--idle-sleep", type=float, default=0.005, help="seconds between polls of an empty queue")
    args = p.parse_args(argv)
    skip_locked_worker(os.environ[PG_DSN_ENV], args.batch, args.idle_sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
