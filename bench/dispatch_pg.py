"""The PostgreSQL rows of ``bench/dispatch.py``: phage replicas, procrastinate and a plain SKIP LOCKED loop.

All three use one throwaway PostgreSQL server (Debian's ``postgresql``
package, started by :class:`phage.testing_postgres.PostgresServer`, the same
server the test suite uses) and a fresh database per run, so no run inherits
another's tables or bloat. The clock runs, as for the SQLite rows, from the
first enqueue (workers already idle and waiting) to the last job's recorded
finish time.

* phage: one or several ``phage coordinator`` replicas on the database and N
  ``phage node`` processes spread over them (each node dials every replica,
  starting with its own); tasks are submitted round-robin to the replicas.
* procrastinate: its schema, ``batch_defer`` from the benchmark (one
  statement per batch), and ``procrastinate worker`` processes with
  LISTEN/NOTIFY (its default) at the given concurrency.
* SKIP LOCKED: ``_pg_peers.py``'s hand-written loop: one committed claim and
  one committed finish per job (or per ``--skip-locked-batch`` jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _util import BENCH_DIR, latency_summary
from dispatch_parts import CpuMeter, RunResult, keep_logs, measure_phage, stop_process, tempdir

from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_until
from phage.testing_postgres import PostgresServer

SYSTEMS = ("phage-pg", "procrastinate", "skip-locked")


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    """One server for every PostgreSQL run of the benchmark."""
    server = PostgresServer().init().start()
    try:
        yield server
    finally:
        server.close()


def _peer_env(dsn: str) -> dict[str, str]:
    import os

    import _pg_peers

    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, _pg_peers.PG_DSN_ENV: dsn}


def _server_pids(server: PostgresServer) -> dict[str, int]:
    """The postmaster (its backends are its children, counted with it)."""
    return {"postgres": server.pid()}


# ---- phage -----------------------------------------------------------------------------------


def run_phage_pg(args: argparse.Namespace, server: PostgresServer, replicas: int, nodes: int) -> RunResult:
    """``replicas`` coordinators on one database, ``nodes`` nodes spread over them."""
    config = (
        f"PostgreSQL, {replicas} coordinator{'s' if replicas > 1 else ''}, {nodes} nodes × {args.concurrency}"
    )
    t_begin = time.monotonic()
    url = server.create_database("bench")
    with tempdir("phage-pg-bench-") as tmp:
        coords: list[CoordinatorProcess] = []
        node_procs: list[NodeProcess] = []
        try:
            for _ in range(replicas):
                coords.append(CoordinatorProcess(tmp / "shared", database_url=url, heartbeat_s=10.0).start())
            for i in range(nodes):
                order = coords[i % replicas :] + coords[: i % replicas]
                node_procs.append(
                    NodeProcess(
                        order[0],
                        tmp / f"node{i}",
                        name=f"bench{i}",
                        concurrency=args.concurrency,
                        sandbox="none",
                        heartbeat_s=10.0,
                        replicas=tuple(order),
                    ).start()
                )
            wait_online(coords[0], nodes, timeout=60)
            setup_s = time.monotonic() - t_begin
            pids = {f"coordinator{i}": c.proc.pid for i, c in enumerate(coords)}  # type: ignore[union-attr]
            pids |= {f"node{i}": n.proc.pid for i, n in enumerate(node_procs)}  # type: ignore[union-attr]
            pids |= _server_pids(server)
            extra = {
                "nodes": nodes,
                "coordinators": replicas,
                "concurrency": args.concurrency,
                "database": "postgresql",
            }
            with contextlib.ExitStack() as stack:
                clients = [stack.enter_context(c.client()) for c in coords]
                result = measure_phage(args, clients, pids, config, extra)
            result.extra |= {"setup_s": round(setup_s, 2), "run_wall_s": round(time.monotonic() - t_begin, 2)}
            return result
        except BaseException:
            keep_logs(tmp, f"phage-pg-{replicas}x{nodes}")
            raise
        finally:
            stop_all([*node_procs, *coords])


# ---- procrastinate ---------------------------------------------------------------------------


def _start_workers(
    argv_for: Any, count: int, env: dict[str, str], tmp: Path
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        log = (tmp / f"worker{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                argv_for(i), env=env, stdout=log, stderr=log, start_new_session=True, cwd=BENCH_DIR
            )
        )
    return procs


def run_procrastinate(args: argparse.Namespace, server: PostgresServer, concurrency: int) -> RunResult:
    """procrastinate workers (LISTEN/NOTIFY) at ``concurrency`` jobs each; jobs deferred in batches."""
    config = f"{args.pg_workers} worker{'s' if args.pg_workers > 1 else ''} × concurrency {concurrency}"
    if concurrency == 1:
        config += " (its default)"
    dsn = server.create_database("procrastinate")
    with tempdir("procrastinate-bench-") as tmp:
        env = _peer_env(dsn)
        asyncio.run(_procrastinate_schema(dsn))
        argv = [
            sys.executable,
            "-m",
            "procrastinate",
            "--app=_pg_peers.app",
            "worker",
            f"--concurrency={concurrency}",
        ]
        workers = _start_workers(lambda _: argv, args.pg_workers, env, tmp)
        try:
            result = asyncio.run(_procrastinate_drive(args, dsn, workers, server))
        except BaseException:
            keep_logs(tmp, "procrastinate")
            raise
        finally:
            for w in workers:
                stop_process(w, signal.SIGINT)
    result.config = config
    result.extra |= {"workers": args.pg_workers, "concurrency": concurrency}
    return result


def _procrastinate_app(dsn: str) -> Any:
    """An App on this run's database with the ``noop`` task (workers build theirs from the environment)."""
    import _pg_peers

    app = _pg_peers.procrastinate.App(connector=_pg_peers.procrastinate.PsycopgConnector(conninfo=dsn))
    app.task(name="noop")(_pg_peers.run_job)
    return app


async def _procrastinate_schema(dsn: str) -> None:
    app = _procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def _procrastinate_drive(
    args: argparse.Namespace, dsn: str, workers: list[subprocess.Popen[bytes]], server: PostgresServer
) -> RunResult:
    import psycopg

    app = _procrastinate_app(dsn)
    noop = app.tasks["noop"]

    async with app.open_async(), await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

        async def done() -> int:
            cur = await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        async def defer(n: int) -> None:
            left = n
            while left > 0:
                k = min(args.batch, left)
                await noop.batch_defer_async(*({} for _ in range(k)))
                left -= k

        async def wait_done(n: int, limit_s: float) -> None:
            deadline = time.monotonic() + limit_s
            while await done() < n:
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    raise TimeoutError(f"procrastinate: {await done()} of {n} jobs done after {limit_s:.0f}s")
                await asyncio.sleep(0.02)

        await asyncio.sleep(1.0)  # the workers connect and LISTEN
        if args.warmup:
            await defer(args.warmup)
            await wait_done(args.warmup, 60)
        meter = CpuMeter({**{f"worker{i}": w.pid for i, w in enumerate(workers)}, **_server_pids(server)})
        first = await _max_id(conn, "procrastinate_jobs")
        t0 = time.time()
        await defer(args.peer_jobs)
        t_enq = time.time()
        await wait_done(args.warmup + args.peer_jobs, max(120.0, args.peer_jobs / 20))
        cpu = meter.stop()
        cur = await conn.execute(
            """
            SELECT extract(epoch FROM d.at), extract(epoch FROM s.at), extract(epoch FROM f.at)
            FROM procrastinate_jobs j
            JOIN procrastinate_events d ON d.job_id = j.id AND d.type = 'deferred'
            JOIN procrastinate_events s ON s.job_id = j.id AND s.type = 'started'
            JOIN procrastinate_events f ON f.job_id = j.id AND f.type = 'succeeded'
            WHERE j.id > %s
            """,
            (first,),
        )
        times = [(float(a), float(b), float(c)) for a, b, c in await cur.fetchall()]
    return _result("procrastinate", args, times, t0, t_enq, cpu, meter.background_pct)


async def _max_id(conn: Any, table: str) -> int:
    cur = await conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}")  # a constant table name
    row = await cur.fetchone()
    return int(row[0])


def _result(
    system: str,
    args: argparse.Namespace,
    times: list[tuple[float, float, float]],
    t0: float,
    t_enq: float,
    cpu: dict[str, float],
    background_pct: float,
) -> RunResult:
    """A peer's run from (enqueued, started, finished) per job, as the database recorded them."""
    return RunResult(
        system,
        "",
        jobs=len(times),
        seconds=max(f for _, _, f in times) - t0,
        enqueue_seconds=t_enq - t0,
        cpu_s=cpu,
        background_pct=background_pct,
        dispatch_loaded=latency_summary([s - d for d, s, _ in times]),
        e2e_loaded=latency_summary([f - d for d, _, f in times]),
    )


# ---- a plain SKIP LOCKED loop ----------------------------------------------------------------


def run_skip_locked(args: argparse.Namespace, server: PostgresServer) -> RunResult:
    """``args.pg_workers`` plain workers; ``args.batch`` jobs inserted per statement."""
    import _pg_peers
    import psycopg

    batch = args.skip_locked_batch
    plural = "s" if args.pg_workers > 1 else ""
    config = f"{args.pg_workers} worker{plural}, {batch} job{'s' if batch > 1 else ''} per claim"
    dsn = server.create_database("skiplocked")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_pg_peers.SKIP_LOCKED_SCHEMA)
    with tempdir("skiplocked-bench-") as tmp:
        argv = [sys.executable, str(BENCH_DIR / "_pg_peers.py"), "skip-locked", "--batch", str(batch)]
        workers = _start_workers(lambda _: argv, args.pg_workers, _peer_env(dsn), tmp)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:

                def insert(n: int) -> None:
                    left = n
                    while left > 0:
                        k = min(args.batch, left)
                        conn.execute(
                            "INSERT INTO bench_jobs (args) SELECT '{}' FROM generate_series(1, %s)", (k,)
                        )
                        left -= k

                def done() -> int:
                    row = conn.execute("SELECT count(*) FROM bench_jobs WHERE status = 'done'").fetchone()
                    return int(row[0]) if row else 0

                time.sleep(0.5)
                if args.warmup:
                    insert(args.warmup)
                    wait_until(lambda: done() >= args.warmup, 60, 0.02, "SKIP LOCKED warm-up")
                meter = CpuMeter(
                    {**{f"worker{i}": w.pid for i, w in enumerate(workers)}, **_server_pids(server)}
                )
                row = conn.execute("SELECT coalesce(max(id), 0) FROM bench_jobs").fetchone()
                first = int(row[0]) if row else 0
                t0 = time.time()
                insert(args.peer_jobs)
                t_enq = time.time()
                total = args.warmup + args.peer_jobs
                wait_until(lambda: done() >= total, max(120.0, args.peer_jobs / 20), 0.02, "SKIP LOCKED jobs")
                cpu = meter.stop()
                rows = conn.execute(
                    "SELECT extract(epoch FROM created_at), extract(epoch FROM started_at), "
                    "extract(epoch FROM finished_at) FROM bench_jobs WHERE id > %s",
                    (first,),
                ).fetchall()
                times = [(float(a), float(b), float(c)) for a, b, c in rows]
        except BaseException:
            keep_logs(tmp, "skip-locked")
            raise
        finally:
            for w in workers:
                stop_process(w)
    result = _result("SKIP LOCKED loop", args, times, t0, t_enq, cpu, meter.background_pct)
    result.config = config
    result.extra |= {"workers": args.pg_workers, "claim_batch": batch}
    return result


def plan(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The PostgreSQL runs of one round."""
    steps: list[tuple[str, Any]] = []
    if "phage-pg" in args.systems:
        steps += [("phage-pg", (r, args.pg_nodes)) for r in args.pg_coordinators]
    if "procrastinate" in args.systems:
        steps += [("procrastinate", c) for c in args.procrastinate_concurrency]
    if "skip-locked" in args.systems:
        steps.append(("skip-locked", None))
    return steps


def run(args: argparse.Namespace, server: PostgresServer, system: str, param: Any) -> RunResult:
    """One PostgreSQL run."""
    if system == "phage-pg":
        return run_phage_pg(args, server, *param)
    if system == "procrastinate":
        return run_procrastinate(args, server, param)
    return run_skip_locked(args, server)
