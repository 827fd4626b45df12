"""Durable no-op jobs per second: phage (coordinator + N node processes) beside huey and arq.

Every system does the same thing: jobs that do nothing go through a durable
queue to a worker and back, and the clock runs from the first enqueue (workers
already running and idle) until the last job's result is recorded. Each result
carries its finish time, so the end of the window is exact rather than the
moment a poll noticed.

* phage: a real ``phage coordinator`` (SQLite, WAL) and N real ``phage node``
  processes on loopback (gRPC over mTLS), tasks ``{"kind": "noop"}`` submitted
  through ``POST /api/tasks`` in batches; a task counts when it is ``verified``
  (submit → queue → FetchTask → StartTasks → SubmitResults, all durable).
  Also measured: submit-to-dispatch latency (task ``created_at`` → first
  attempt's ``dispatched_at``) for a random sample of the timed tasks, and
  again at idle with tasks submitted one at a time.
* huey: ``SqliteHuey`` on a SQLite file and its consumer; once with huey's
  defaults (``synchronous=FULL``: an fsync per commit) and once with
  ``synchronous=NORMAL``, phage's own setting.
* arq: arq workers on a redis-server this script starts (AOF, ``appendfsync
  everysec``) on a free loopback port in a temporary directory.

Runs are interleaved round by round (phage, huey, arq, phage, …) so drift on
the machine hits every system alike; the table shows medians over rounds.

    .venv/bin/python bench/dispatch.py            # full run (just under 3 minutes on 2 cores)
    .venv/bin/python bench/dispatch.py --quick    # smoke run (~40 s)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dispatch_pg
from _util import (
    BENCH_DIR,
    clean_nan,
    machine_info,
    median,
    wait_for_quiet,
    write_results,
)
from dispatch_parts import CpuMeter, RunResult, console, keep_logs, measure_phage, stop_process, tempdir
from dispatch_report import markdown, print_table, ratios

from phage.testing import CoordinatorProcess, NodeProcess, free_port, wait_online, wait_until
from phage.testing_postgres import PostgresServer


def run_phage(args: argparse.Namespace, nodes: int, sync: str, default: bool = False) -> RunResult:
    """Coordinator + ``nodes`` node processes; ``args.tasks`` no-op tasks end to end.

    ``default``: nodes as ``phage node`` starts them (no ``--concurrency``), not ``args.concurrency``.
    """
    concurrency = None if default else args.concurrency
    config = f"{nodes} node{'s' if nodes > 1 else ''} × {concurrency or 'default slots'}"
    if sync != "NORMAL":
        config += f", sync={sync}"
    t_begin = time.monotonic()
    with tempdir("phage-bench-") as tmp:
        coord = CoordinatorProcess(tmp / "coord", heartbeat_s=10.0, env={"PHAGE_SQLITE_SYNCHRONOUS": sync})
        node_procs: list[NodeProcess] = []
        try:
            coord.start()
            for i in range(nodes):
                node_procs.append(
                    NodeProcess(
                        coord,
                        tmp / f"node{i}",
                        name=f"bench{i}",
                        concurrency=concurrency,
                        sandbox="none",
                        heartbeat_s=10.0,
                    ).start()
                )
            wait_online(coord, nodes, timeout=60)
            setup_s = time.monotonic() - t_begin
            with coord.client() as client:
                pids = {"coordinator": coord.proc.pid}  # type: ignore[union-attr]
                pids |= {f"node{i}": n.proc.pid for i, n in enumerate(node_procs)}  # type: ignore[union-attr]
                extra = {"nodes": nodes, "concurrency": concurrency, "sqlite_synchronous": sync}
                result = measure_phage(args, [client], pids, config, extra)
            result.extra |= {"setup_s": round(setup_s, 2), "run_wall_s": round(time.monotonic() - t_begin, 2)}
            return result
        except BaseException:
            keep_logs(tmp, f"phage-{nodes}-{sync}")
            raise
        finally:
            for n in node_procs:
                n.stop()
            coord.stop()


# ---- huey ------------------------------------------------------------------------------------


def _peer_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_huey(args: argparse.Namespace, sync: str) -> RunResult:
    """SqliteHuey + its consumer; ``args.peer_jobs`` no-op jobs enqueued one call each."""
    import _peers

    label = "sync=FULL (huey default)" if sync == "default" else "sync=NORMAL (as phage)"
    config = f"{args.huey_workers} {args.huey_worker_type}, {label}"
    with tempdir("huey-bench-") as tmp:
        db = tmp / "huey.db"
        app, noop = _peers.make_huey(str(db), sync)
        argv = [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "_peers.huey",
            "-w",
            str(args.huey_workers),
            "-k",
            args.huey_worker_type,
            "-d",
            "0.001",  # poll the empty queue every 1-10 ms rather than backing off to 10 s
            "-m",
            "0.01",
            "-b",
            "1.05",
            "-q",
            "-C",
        ]
        env = _peer_env(**{_peers.HUEY_DB_ENV: str(db), _peers.HUEY_SYNC_ENV: sync})
        log = (tmp / "consumer.log").open("wb")
        consumer = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            if args.warmup:
                for _ in range(args.warmup):
                    noop()
                wait_until(lambda: app.result_count() >= args.warmup, 60, 0.01, "huey warm-up")
                app.storage.flush_results()
            else:
                time.sleep(1.0)
            meter = CpuMeter({"huey consumer": consumer.pid})
            t0 = time.time()
            for _ in range(args.peer_jobs):
                noop()
            t_enq = time.time()
            wait_until(
                lambda: app.result_count() >= args.peer_jobs,
                max(120.0, args.peer_jobs / 50),
                0.01,
                "huey results",
            )
            cpu = meter.stop()
            ends = [pickle.loads(v) for v in app.storage.result_items().values()]
            return RunResult(
                "huey",
                config,
                jobs=len(ends),
                seconds=max(ends) - t0,
                enqueue_seconds=t_enq - t0,
                cpu_s=cpu,
                background_pct=meter.background_pct,
                extra={"huey_sync": sync, "workers": args.huey_workers, "worker_type": args.huey_worker_type},
            )
        finally:
            stop_process(consumer, signal.SIGINT)
            app.storage.close()


# ---- arq -------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A private redis-server on a free loopback port, AOF on (appendfsync everysec)."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    argv = [
        redis_bin,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--protected-mode",
        "yes",
    ]
    log = (tmp / "redis.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        wait_until(up, 15, 0.05, "redis-server")
        yield port, proc
    finally:
        stop_process(proc)


def run_arq(args: argparse.Namespace) -> RunResult:
    """arq workers on a private Redis; ``args.peer_jobs`` no-op jobs, enqueued ``args.batch`` at a time."""
    import _peers

    config = f"{args.arq_workers} worker × max_jobs {args.arq_max_jobs}, AOF everysec"
    with tempdir("arq-bench-") as tmp, redis_server(tmp) as (port, redis_proc):
        env = _peer_env(
            **{
                _peers.ARQ_PORT_ENV: str(port),
                _peers.ARQ_MAX_JOBS_ENV: str(args.arq_max_jobs),
                _peers.ARQ_POLL_ENV: "0.01",
            }
        )
        workers = []
        for i in range(args.arq_workers):
            log = (tmp / f"worker{i}.log").open("wb")
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "arq", "_peers.ArqWorker"],
                    env=env,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        try:
            result = asyncio.run(_arq_drive(args, port, workers, redis_proc))
        finally:
            for w in workers:
                stop_process(w, signal.SIGINT)
        result.config = config
        return result


async def _arq_drive(
    args: argparse.Namespace, port: int, workers: list[subprocess.Popen[bytes]], redis_proc: Any
) -> RunResult:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))

    async def results() -> int:
        return len(await pool.keys("arq:result:*"))

    async def wait_results(n: int, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while await results() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"arq: {await results()} of {n} results after {limit_s:.0f}s")
            await asyncio.sleep(0.01)

    async def enqueue(n: int) -> None:
        left = n
        while left > 0:
            k = min(args.batch, left)
            await asyncio.gather(*(pool.enqueue_job("arq_noop") for _ in range(k)))
            left -= k

    try:
        if args.warmup:
            await enqueue(args.warmup)
            await wait_results(args.warmup, 60)
            keys = await pool.keys("arq:result:*")
            if keys:
                await pool.delete(*keys)
        else:
            await asyncio.sleep(2.0)
        meter = CpuMeter(
            {**{f"arq worker{i}": w.pid for i, w in enumerate(workers)}, "redis": redis_proc.pid}
        )
        t0 = time.time()
        await enqueue(args.peer_jobs)
        t_enq = time.time()
        await wait_results(args.peer_jobs, max(120.0, args.peer_jobs / 50))
        cpu = meter.stop()
        done = await pool.all_job_results()
        ends = [r.finish_time.timestamp() for r in done]
        return RunResult(
            "arq",
            "",
            jobs=len(ends),
            seconds=max(ends) - t0,
            enqueue_seconds=t_enq - t0,
            failed=sum(1 for r in done if not r.success),
            cpu_s=cpu,
            background_pct=meter.background_pct,
            extra={"workers": args.arq_workers, "max_jobs": args.arq_max_jobs},
        )
    finally:
        await pool.aclose()


# ---- report ----------------------------------------------------------------------------------


def summarise(runs: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (system, config): medians over rounds, plus the spread of the rate."""
    rows: dict[tuple[str, str], list[RunResult]] = {}
    for r in runs:
        rows.setdefault(r.key, []).append(r)
    out = []
    for (system, config), rs in rows.items():
        rates = [r.rate for r in rs]

        def med(attr: str, key: str, rs: list[RunResult] = rs) -> float:
            return median(getattr(r, attr).get(key, float("nan")) for r in rs)

        out.append(
            {
                "system": system,
                "config": config,
                "rounds": len(rs),
                "jobs": rs[0].jobs,
                "jobs_per_s": median(rates),
                "jobs_per_s_min": min(rates),
                "jobs_per_s_max": max(rates),
                "enqueue_per_s": median(r.jobs / r.enqueue_seconds for r in rs if r.enqueue_seconds > 0),
                "cpu_ms_per_job": median(1000 * sum(r.cpu_s.values()) / max(r.jobs, 1) for r in rs),
                "dispatch_loaded_p50_ms": med("dispatch_loaded", "p50_ms"),
                "dispatch_loaded_p99_ms": med("dispatch_loaded", "p99_ms"),
                "dispatch_idle_p50_ms": med("dispatch_idle", "p50_ms"),
                "dispatch_idle_p99_ms": med("dispatch_idle", "p99_ms"),
                "e2e_loaded_p50_ms": med("e2e_loaded", "p50_ms"),
                "e2e_loaded_p99_ms": med("e2e_loaded", "p99_ms"),
                "failed": sum(r.failed for r in rs),
                "background_cpu_pct": median(r.background_pct for r in rs),
            }
        )
    return out


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run: 1,2 nodes, 2000 jobs, 1 round")
    p.add_argument("--nodes", default=None, help="comma-separated node counts for phage (default 1,2,4)")
    p.add_argument("--tasks", type=int, default=None, help="phage tasks per run (default 5000)")
    p.add_argument("--peer-jobs", type=int, default=None, help="huey/arq jobs per run (default: --tasks)")
    p.add_argument("--concurrency", type=int, default=256, help="tasks per node at once (default 256)")
    p.add_argument(
        "--default-nodes", default="2",
        help="also run phage with default nodes (no --concurrency) at these node counts (default 2; '' none)",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=500, help="tasks per POST /api/tasks (and arq gather)")
    p.add_argument("--warmup", type=int, default=200, help="jobs run before each timed window")
    p.add_argument("--rounds", type=int, default=None, help="rounds over all systems (default 3)")
    p.add_argument("--latency-samples", type=int, default=300, help="tasks sampled for dispatch latency")
    p.add_argument("--idle-probes", type=int, default=None, help="tasks submitted one by one at idle")
    p.add_argument("--idle-rate", type=float, default=25.0, help="idle probes per second")
    p.add_argument(
        "--full-sync", choices=("first", "none", "all"), default="first",
        help="also run phage with synchronous=FULL at the first node count (default), none, or all",
    )  # fmt: skip
    p.add_argument("--huey-workers", type=int, default=1)
    p.add_argument("--huey-worker-type", choices=("thread", "process", "greenlet"), default="thread")
    p.add_argument("--arq-workers", type=int, default=1)
    p.add_argument("--arq-max-jobs", type=int, default=10)
    p.add_argument(
        "--systems", default="phage,huey,arq,phage-pg,procrastinate,skip-locked",
        help="comma-separated subset of phage,huey,arq (SQLite, Redis) and "
        "phage-pg,procrastinate,skip-locked (PostgreSQL) to run (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--pg-coordinators",
        default="1,2",
        help="phage on PostgreSQL: coordinator replicas per run (default 1,2)",
    )
    p.add_argument(
        "--pg-nodes", type=int, default=2, help="phage on PostgreSQL: nodes, spread over the replicas"
    )
    p.add_argument("--pg-workers", type=int, default=2, help="procrastinate / SKIP LOCKED worker processes")
    p.add_argument(
        "--procrastinate-concurrency", default="1,16",
        help="procrastinate jobs at once per worker, one run each (default 1,16; 1 is its default)",
    )  # fmt: skip
    p.add_argument(
        "--skip-locked-batch", type=int, default=1, help="jobs the plain loop claims per statement"
    )
    p.add_argument(
        "--quiet-threshold", type=float, default=25.0,
        help="before each run wait until the machine is below this CPU %% busy (100: do not wait)",
    )  # fmt: skip
    p.add_argument("--quiet-wait", type=float, default=120.0, help="longest wait for quiet (s)")
    p.add_argument(
        "--noisy-pct", type=float, default=15.0,
        help="a run during which other processes used more than this %% of the machine is run again",
    )  # fmt: skip
    p.add_argument("--noisy-retries", type=int, default=2, help="how many times to run a noisy run again")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    quick = args.quick
    args.nodes = [int(n) for n in (args.nodes or ("1,2" if quick else "1,2,4")).split(",")]
    args.tasks = args.tasks or (2000 if quick else 5000)
    args.peer_jobs = args.peer_jobs or args.tasks
    args.default_nodes = [int(n) for n in args.default_nodes.split(",") if n.strip()]
    args.rounds = args.rounds or (1 if quick else 3)
    args.idle_probes = args.idle_probes if args.idle_probes is not None else (20 if quick else 30)
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    args.pg_coordinators = [int(n) for n in args.pg_coordinators.split(",") if n.strip()]
    args.procrastinate_concurrency = [int(n) for n in args.procrastinate_concurrency.split(",") if n.strip()]
    if quick:
        args.latency_samples = min(args.latency_samples, 100)
        args.warmup = min(args.warmup, 100)
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The runs of one round, in order."""
    steps: list[tuple[str, Any]] = []
    if "phage" in args.systems:
        for i, n in enumerate(args.nodes):
            steps.append(("phage", (n, "NORMAL")))
            if args.full_sync == "all" or (args.full_sync == "first" and i == 0):
                steps.append(("phage", (n, "FULL")))
        steps += [("phage", (n, "NORMAL", True)) for n in args.default_nodes]
    if "huey" in args.systems:
        steps += [("huey", "default"), ("huey", "normal")]
    if "arq" in args.systems:
        steps.append(("arq", None))
    return steps + dispatch_pg.plan(args)


def run_one(
    args: argparse.Namespace,
    label: str,
    system: str,
    param: Any,
    failures: list[dict[str, str]],
    server: PostgresServer | None,
) -> RunResult | None:
    """One run, after waiting for the machine to quieten; None (and a recorded failure) if it fails."""
    if args.quiet_threshold < 100:
        wait_for_quiet(args.quiet_threshold, args.quiet_wait, console.print)
    try:
        with console.status(label):
            if system == "phage":
                result = run_phage(args, *param)
            elif system == "huey":
                result = run_huey(args, param)
            elif system == "arq":
                result = run_arq(args)
            else:
                assert server is not None
                result = dispatch_pg.run(args, server, system, param)
    except Exception as exc:  # one failed run must not lose the others
        console.print(f"[red]{label}: failed: {type(exc).__name__}: {exc}[/]")
        failures.append({"run": label, "error": f"{type(exc).__name__}: {exc}"})
        return None
    console.print(
        f"{label}: [bold]{result.rate:,.0f}[/] jobs/s ({result.jobs} in {result.seconds:.2f} s; "
        f"enqueue {result.enqueue_seconds:.2f} s)"
        + (f" [red]{result.failed} failed[/]" if result.failed else "")
        + (
            f" [yellow](other processes used {result.background_pct:.0f}% of the machine)[/]"
            if result.background_pct >= 10
            else ""
        )
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run every round, print the table, write the JSON."""
    args = parse_args(argv)
    random.seed(args.seed)
    started = time.time()
    machine = machine_info({"redis_server": ["redis-server", "--version"]})
    console.print(
        f"[bold]bench/dispatch.py[/] on {machine['cpu_model']} ({machine['cores']} cores, "
        f"{machine['memory_gib']} GiB), {machine['os']}, Python {machine['python']}"
    )
    runs: list[RunResult] = []
    failures: list[dict[str, str]] = []
    discarded: list[RunResult] = []
    steps = plan(args)
    on_pg = any(system in dispatch_pg.SYSTEMS for system, _ in steps)
    with dispatch_pg.postgres() if on_pg else contextlib.nullcontext() as server:
        for rnd in range(args.rounds):
            for system, param in steps:
                label = f"round {rnd + 1}/{args.rounds} · {system} {param if param is not None else ''}"
                for attempt in range(1 + args.noisy_retries):
                    result = run_one(args, label, system, param, failures, server)
                    if (
                        result is None
                        or result.background_pct <= args.noisy_pct
                        or attempt == args.noisy_retries
                    ):
                        break
                    console.print(
                        f"[yellow]{label}: other processes used {result.background_pct:.0f}% of the machine "
                        "during the run; discarded, running it again[/]"
                    )
                    discarded.append(result)
                if result is not None:
                    runs.append(result)
    rows = summarise(runs)
    rat = ratios(rows)
    print_table(rows, rat, args)
    path = write_results(
        "dispatch",
        clean_nan(
            {
                "bench": "dispatch",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
                "machine": machine,
                "wall_s": round(time.time() - started, 1),
                "summary": rows,
                "ratios": rat,
                "runs": [r.to_json() for r in runs],
                "failures": failures,
                "discarded_noisy_runs": [r.to_json() for r in discarded],
            }
        ),
    )
    md = path.with_suffix(".md")
    md.write_text(markdown(rows, rat, args))
    console.print(f"wrote {path} and {md.name}")
    console.print(f"total wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
