"""How many nodes one coordinator holds at 10 s heartbeats, over real gRPC + mutual TLS.

A real ``phage coordinator`` subprocess (heartbeat interval 10 s, so a node
silent for 30 s is dead) and simulated nodes in several client processes.
Every simulated node is a real member of the pool: it makes its own Ed25519
identity and TLS key (``NodeIdentity.generate()``), enrolls through
``phage.node.connection.enroll`` (join token, pinned CA fingerprint, CSR) and
gets its own client certificate, then opens its own mutual-TLS channel
(``open_channel``) and sends ``Heartbeat`` every 10 s, at a random phase so
the load is spread evenly. Each heartbeat carries the metrics a one-GPU node
reports.

The node count climbs a ladder (default 1000, 2500, 5000, 10000). At each
step the new nodes enroll (the earlier ones keep beating), every node gets
one interval to settle, and then heartbeats are timed for a window (default
60 s): latency p50/p99 as the node sees it (send → response), how late the
client sent them (its own scheduling lag, which says whether the client side
kept up), errors, and at the end how many nodes the coordinator counts online
(``GET /api/status``) and how many it heard from within 1.5 intervals
(``GET /api/nodes``). The ladder stops early once the coordinator falls
behind (errors, nodes lost, or p99 over a second).

The client processes and the coordinator share this machine's cores: the
figures are for both together, not for the coordinator alone.

    .venv/bin/python bench/heartbeats.py            # full ladder (~7 minutes)
    .venv/bin/python bench/heartbeats.py --quick    # 500 nodes, 20 s window
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    busy_cpu_seconds,
    clean_nan,
    fmt_ms,
    latency_summary,
    machine_info,
    percentile,
    wait_for_quiet,
    write_results,
)
from heartbeats_report import markdown, print_table

GIB = 1024**3


# ---- client processes --------------------------------------------------------------------------


@dataclass
class ClientConfig:
    """What a client process needs to know (picklable, for spawn)."""

    index: int
    grpc_address: str
    enroll_address: str
    join_token: str
    ca_fingerprint: str
    interval_s: float
    rpc_timeout_s: float
    enroll_concurrency: int
    long_poll: bool
    seed: int


class SimNode:
    """One simulated node: identity, channel, prepared heartbeat."""

    __slots__ = ("channel", "node_id", "poller", "request", "stub", "task")

    def __init__(self, node_id: str, channel: Any, stub: Any, request: Any) -> None:
        self.node_id = node_id
        self.channel = channel
        self.stub = stub
        self.request = request
        self.task: asyncio.Task[None] | None = None
        self.poller: asyncio.Task[None] | None = None


class Client:
    """The simulated nodes of one process, driven by commands from the benchmark over a pipe."""

    def __init__(self, conn: Connection, cfg: ClientConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.nodes: list[SimNode] = []
        self.recording = False
        self.latencies = array.array("f")
        self.lags = array.array("f")
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.polls = 0
        self.poll_errors: Counter[str] = Counter()
        self.cmds: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def _on_command(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            msg = ("quit",)
        self.cmds.put_nowait(msg)

    async def run(self) -> None:
        """Serve commands until told to quit."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_command)
        while True:
            cmd = await self.cmds.get()
            op = cmd[0]
            if op == "add":
                reply = await self.add(int(cmd[1]))
                # thousands of simulated nodes share this process; real nodes are processes of their own.
                # Keep this process's full collections (hundreds of ms at 2,500 nodes) out of the latencies.
                gc.collect()
                gc.freeze()
                self.conn.send(reply)
            elif op == "start":
                self.latencies, self.lags = array.array("f"), array.array("f")
                self.errors.clear()
                self.sent = 0
                self.polls = 0
                self.poll_errors.clear()
                self.recording = True
                self.conn.send(("started",))
            elif op == "stop":
                self.recording = False
                self.conn.send(
                    (
                        "stats",
                        self.latencies.tobytes(),
                        self.lags.tobytes(),
                        dict(self.errors),
                        self.sent,
                        len(self.nodes),
                        self.polls,
                        dict(self.poll_errors),
                    )
                )
            elif op == "quit":
                loop.remove_reader(self.conn.fileno())
                await self.close()
                with contextlib.suppress(OSError):
                    self.conn.send(("bye",))
                return

    def _info(self, n: int) -> dict[str, Any]:
        return {
            "name": f"sim-{self.cfg.index}-{n}",
            "hostname": f"sim-{self.cfg.index}-{n}",
            "gpus": [self._gpu()],
            "driver_version": "550.54.14",
            "cuda_version": "12.4",
            "cpu_count": 16,
            "memory_total_bytes": 64 * GIB,
            "sandboxes": ["bwrap"],
            "engines": ["vllm"],
            "loaded_model": "",
            "max_concurrency": 4,
            "phage_version": "bench",
        }

    def _gpu(self) -> dict[str, Any]:
        return {
            "index": 0,
            "model": "NVIDIA GeForce RTX 4090",
            "vram_total_bytes": 24 * GIB,
            "vram_used_bytes": int(self.rng.uniform(1, 20) * GIB),
            "utilization": round(self.rng.random(), 2),
            "temperature_c": round(self.rng.uniform(35, 80), 1),
        }

    async def add(self, count: int) -> tuple[Any, ...]:
        """Enroll ``count`` new nodes (each its own identity and certificate) and start their heartbeats."""
        from phage.node.connection import enroll, open_channel
        from phage.pki.identity import NodeIdentity
        from phage.protocol import convert
        from phage.protocol.v1 import phage_pb2 as pb
        from phage.protocol.v1 import phage_pb2_grpc as pb_grpc

        sem = asyncio.Semaphore(self.cfg.enroll_concurrency)
        failures: list[str] = []
        added = 0
        base = len(self.nodes)
        t0 = time.perf_counter()

        async def one(n: int) -> None:
            nonlocal added
            async with sem:
                identity = NodeIdentity.generate()
                creds = None
                for attempt in range(5):
                    try:
                        creds = await enroll(
                            identity,
                            enroll_address=self.cfg.enroll_address,
                            join_token=self.cfg.join_token,
                            ca_fingerprint=self.cfg.ca_fingerprint,
                            info=self._info(n),
                        )
                        break
                    except Exception as exc:  # count it and retry: the coordinator may be swamped
                        code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
                        failures.append(f"enroll: {code}: {exc}"[:200])
                        await asyncio.sleep(0.5 * (attempt + 1))
                if creds is None:
                    return
                channel = open_channel(self.cfg.grpc_address, identity, creds)
                stub = pb_grpc.PhageCoordinatorStub(channel)  # type: ignore[no-untyped-call]
                metrics = {"gpus": [self._gpu()], "cpu_percent": 12.5, "memory_used_bytes": 9 * GIB}
                request = pb.HeartbeatRequest(
                    node_id=identity.node_id, metrics=convert.metrics_from_dict(metrics)
                )
                node = SimNode(identity.node_id, channel, stub, request)
                # first beat right away: connects the channel (TLS handshake) outside any timed window
                for attempt in range(5):
                    try:
                        await stub.Heartbeat(request, timeout=30)
                        break
                    except Exception as exc:
                        code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
                        failures.append(f"first heartbeat: {code}"[:200])
                        await asyncio.sleep(0.5 * (attempt + 1))
                self.nodes.append(node)
                node.task = asyncio.create_task(self._beat(node))
                if self.cfg.long_poll:
                    node.poller = asyncio.create_task(self._poll(node, pb.FetchTaskRequest))
                added += 1

        await asyncio.gather(*(one(base + i) for i in range(count)))
        return ("added", added, time.perf_counter() - t0, len(failures), failures[:5])

    async def _beat(self, node: SimNode) -> None:
        import grpc

        loop = asyncio.get_running_loop()
        interval = self.cfg.interval_s
        due = loop.time() + self.rng.uniform(0, interval)
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = loop.time() - due
            recording = self.recording
            start = time.perf_counter()
            try:
                await node.stub.Heartbeat(node.request, timeout=self.cfg.rpc_timeout_s)
                if recording and self.recording:
                    self.latencies.append(time.perf_counter() - start)
                    self.lags.append(lag)
                    self.sent += 1
            except grpc.aio.AioRpcError as exc:
                if recording and self.recording:
                    self.errors[exc.code().name] += 1
                    self.sent += 1
            due += interval
            if loop.time() - due > interval:  # hopelessly behind: do not fire a burst to catch up
                due = loop.time()

    async def _poll(self, node: SimNode, request_type: Any) -> None:
        """What an idle real node also does: keep one FetchTask long-poll open (20 s, as phage node)."""
        import grpc

        await asyncio.sleep(self.rng.uniform(0, 20.0))
        request = request_type(node_id=node.node_id, max_tasks=4, wait_ms=20_000)
        while True:
            try:
                await node.stub.FetchTask(request, timeout=30)
                if self.recording:
                    self.polls += 1
            except grpc.aio.AioRpcError as exc:
                if self.recording:
                    self.poll_errors[exc.code().name] += 1
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Stop every node and close its channel."""
        tasks = [t for n in self.nodes for t in (n.task, n.poller) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(n.channel.close(None) for n in self.nodes), return_exceptions=True)


def client_main(conn: Connection, cfg: ClientConfig) -> None:
    """Entry point of a client process."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(Client(conn, cfg).run())


# ---- the benchmark -----------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Open files: soft limit up to the hard limit (each node is a socket on both sides)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Pool:
    """The client processes."""

    def __init__(self, procs: int, base: dict[str, Any], addresses: list[tuple[str, str]]) -> None:
        """``addresses``: (gRPC, enrollment) of each coordinator; process i talks to number i mod N."""
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.counts = [0] * procs
        for i in range(procs):
            parent, child = ctx.Pipe()
            grpc_address, enroll_address = addresses[i % len(addresses)]
            cfg = ClientConfig(
                index=i,
                seed=base["seed"] * 1000 + i,
                grpc_address=grpc_address,
                enroll_address=enroll_address,
                **{k: v for k, v in base.items() if k != "seed"},
            )
            p = ctx.Process(target=client_main, args=(child, cfg), name=f"sim-client-{i}", daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def _all(self, msg: tuple[Any, ...], timeout: float) -> list[tuple[Any, ...]]:
        for c in self.conns:
            c.send(msg)
        out = []
        deadline = time.monotonic() + timeout
        for c, p in zip(self.conns, self.procs, strict=True):
            while not c.poll(0.5):
                if not p.is_alive():
                    raise RuntimeError(f"client process {p.name} died (exit code {p.exitcode})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"client process {p.name} did not answer {msg[0]!r} in {timeout:.0f}s")
            out.append(c.recv())
        return out

    def add(self, total_new: int, timeout: float) -> list[tuple[Any, ...]]:
        """Spread ``total_new`` nodes over the processes, fewest first; enroll them all."""
        shares = [0] * len(self.conns)
        for _ in range(total_new):
            i = min(range(len(shares)), key=lambda j: self.counts[j] + shares[j])
            shares[i] += 1
        for c, k in zip(self.conns, shares, strict=True):
            c.send(("add", k))
        out = []
        deadline = time.monotonic() + timeout
        for i, (c, p) in enumerate(zip(self.conns, self.procs, strict=True)):
            while not c.poll(0.5):
                if not p.is_alive():
                    raise RuntimeError(f"client process {p.name} died (exit code {p.exitcode})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"enrollment did not finish in {timeout:.0f}s")
            reply = c.recv()
            self.counts[i] += reply[1]
            out.append(reply)
        return out

    def start(self) -> None:
        """Begin a timed window in every process."""
        self._all(("start",), 60)

    def stop(self) -> list[tuple[Any, ...]]:
        """End the window; every process's figures."""
        return self._all(("stop",), 120)

    def pids(self) -> list[int]:
        """Client process ids."""
        return [p.pid for p in self.procs]

    def close(self) -> None:
        """Ask every process to quit, then make sure."""
        with contextlib.suppress(Exception):
            self._all(("quit",), 60)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def _db_cpu_seconds(pids: list[int]) -> float:
    """The database server and its backends (its children)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            server = psutil.Process(pid)
            for proc in (server, *server.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
    return total


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def measure_step(
    args: argparse.Namespace,
    coord_pids: list[int],
    db_pids: list[int],
    pool: Pool,
    target: int,
    current: int,
    http: Any,
) -> dict[str, Any]:
    """Enroll up to ``target`` nodes, settle, time one window, ask the (first) coordinator what it sees."""
    import psutil

    row: dict[str, Any] = {"nodes": target}
    new = target - current
    t0 = time.perf_counter()
    replies = pool.add(new, timeout=max(600.0, new / 5))
    enroll_s = time.perf_counter() - t0
    added = sum(r[1] for r in replies)
    row["enrolled"] = added
    row["enroll_seconds"] = round(enroll_s, 2)
    row["enroll_per_s"] = round(new / enroll_s, 1) if enroll_s > 0 else None
    row["enroll_failures"] = sum(r[3] for r in replies)
    row["enroll_failure_examples"] = [e for r in replies for e in r[4]][:5]
    print(
        f"  {target:>6} nodes: enrolled {new} new in {enroll_s:.1f} s ({row['enroll_per_s']}/s)"
        + (f", {row['enroll_failures']} failed attempts" if row["enroll_failures"] else ""),
        flush=True,
    )
    time.sleep(args.interval + args.settle)  # every node's phase comes round once more before timing

    coord_cpu0 = _cpu_seconds(coord_pids)
    db_cpu0 = _db_cpu_seconds(db_pids)
    bench_cpu0 = _cpu_seconds([os.getpid()])
    client_cpu0 = _cpu_seconds(pool.pids())
    psutil.cpu_percent(None)
    busy0 = busy_cpu_seconds()
    kernel0 = psutil.cpu_times()
    w0 = time.perf_counter()
    pool.start()
    time.sleep(args.window)
    stats = pool.stop()
    window = time.perf_counter() - w0
    machine_busy = psutil.cpu_percent(None)
    coord_cpu = _cpu_seconds(coord_pids) - coord_cpu0
    db_cpu = _db_cpu_seconds(db_pids) - db_cpu0
    client_cpu = _cpu_seconds(pool.pids()) - client_cpu0
    kernel1 = psutil.cpu_times()
    softirq_s = getattr(kernel1, "softirq", 0.0) - getattr(kernel0, "softirq", 0.0)
    steal_s = getattr(kernel1, "steal", 0.0) - getattr(kernel0, "steal", 0.0)
    others = (
        busy_cpu_seconds()
        - busy0
        - coord_cpu
        - db_cpu
        - client_cpu
        - _cpu_seconds([os.getpid()])
        + bench_cpu0
    )

    latencies: list[float] = []
    lags: list[float] = []
    errors: Counter[str] = Counter()
    sent = polls = 0
    poll_errors: Counter[str] = Counter()
    for _, lat_b, lag_b, errs, n_sent, _, n_polls, p_errs in stats:
        latencies.extend(array.array("f", lat_b))
        lags.extend(array.array("f", lag_b))
        errors.update(errs)
        sent += n_sent
        polls += n_polls
        poll_errors.update(p_errs)
    t_status = time.perf_counter()
    status = http.get("/api/status").json()
    status_ms = (time.perf_counter() - t_status) * 1000
    t_nodes = time.perf_counter()
    nodes = http.get("/api/nodes").json()["nodes"]
    nodes_ms = (time.perf_counter() - t_nodes) * 1000
    fresh = sum(1 for n in nodes if n["state"] == "online" and n["heartbeat_age_s"] <= 1.5 * args.interval)
    online = status["nodes"]["online"]
    row.update(
        {
            "window_s": round(window, 1),
            "heartbeats": sent,
            "heartbeats_ok": len(latencies),
            "heartbeats_per_s": round(len(latencies) / window, 1),
            "expected_per_s": round(target / args.interval, 1),
            "errors": dict(errors),
            "error_rate": (sum(errors.values()) / sent) if sent else None,
            "latency": latency_summary(latencies),
            "client_lag": latency_summary(lags),
            "long_polls_completed": polls if args.long_poll else None,
            "long_poll_errors": dict(poll_errors),
            "online": online,
            "online_fraction": online / target if target else None,
            "dead": status["nodes"]["dead"],
            "fresh_fraction": fresh / target if target else None,
            "coordinator_cpu_s": round(coord_cpu, 2),
            "clients_cpu_s": round(client_cpu, 2),
            "coordinator_cpu_pct": round(100 * coord_cpu / window, 1),
            "coordinator_rss_mib": round(
                sum(psutil.Process(p).memory_info().rss for p in coord_pids) / 2**20, 1
            ),
            "coordinators": len(coord_pids),
            "database_cpu_pct": round(100 * db_cpu / window, 1) if db_pids else None,
            "clients_cpu_pct": round(100 * client_cpu / window, 1),
            "machine_busy_pct": machine_busy,
            "softirq_pct": round(100 * softirq_s / (window * (os.cpu_count() or 1)), 1),
            "steal_pct": round(100 * steal_s / (window * (os.cpu_count() or 1)), 1),
            "other_load_pct": round(max(0.0, 100 * others / (window * (os.cpu_count() or 1))), 1),
            "status_ms": round(status_ms, 1),
            "nodes_list_ms": round(nodes_ms, 1),
        }
    )
    lat = row["latency"]
    print(
        f"  {target:>6} nodes: {row['heartbeats_per_s']}/s heartbeats (want {row['expected_per_s']}), "
        f"p50 {fmt_ms(lat['p50_ms'])} ms, p99 {fmt_ms(lat['p99_ms'])} ms, errors {sum(errors.values())}, "
        f"online {online}/{target}, coordinator CPU {row['coordinator_cpu_pct']}%, "
        f"clients CPU {row['clients_cpu_pct']}%",
        flush=True,
    )
    return row


def saturated(row: dict[str, Any], args: argparse.Namespace) -> str | None:
    """Why the coordinator no longer keeps up at this step, or None."""
    if sum(row["long_poll_errors"].values()) > 0.01 * max(1, row["nodes"]):
        return f"{sum(row['long_poll_errors'].values())} FetchTask long-polls failed"
    if (row["error_rate"] or 0) > 0.01:
        return f"{100 * row['error_rate']:.1f}% of heartbeats failed"
    if (row["online_fraction"] or 0) < 0.99:
        return f"only {100 * row['online_fraction']:.1f}% of nodes online"
    if row["latency"]["p99_ms"] > args.p99_limit_ms:
        return f"heartbeat p99 {row['latency']['p99_ms']:.0f} ms > {args.p99_limit_ms:.0f} ms"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="500 nodes, 20 s window")
    p.add_argument(
        "--ladder", default=None, help="comma-separated node counts (default 1000,2500,5000,10000)"
    )
    p.add_argument("--window", type=float, default=None, help="timed seconds per step (default 60)")
    p.add_argument(
        "--interval", type=float, default=10.0, help="heartbeat interval (s), also the coordinator's"
    )
    p.add_argument("--settle", type=float, default=2.0, help="extra seconds after one interval before timing")
    p.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--enroll-concurrency", type=int, default=16, help="enrollments in flight per process")
    p.add_argument("--rpc-timeout", type=float, default=10.0, help="heartbeat RPC deadline (s), as a node")
    p.add_argument("--p99-limit-ms", type=float, default=1000.0, help="stop the ladder past this p99")
    p.add_argument(
        "--long-poll", action="store_true",
        help="each node also keeps a FetchTask long-poll open (20 s), as an idle real node does",
    )  # fmt: skip
    p.add_argument("--keep-going", action="store_true", help="climb the whole ladder even when saturated")
    p.add_argument(
        "--coordinator-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the coordinator process (e.g. PHAGE_… settings); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--quiet-threshold", type=float, default=25.0,
        help="first wait until the machine is below this CPU %% busy (100: do not wait)",
    )  # fmt: skip
    p.add_argument("--quiet-wait", type=float, default=120.0, help="longest wait for quiet (s)")
    p.add_argument(
        "--postgres", action="store_true",
        help="the coordinator on a PostgreSQL server this script starts (Debian's package), not SQLite",
    )  # fmt: skip
    p.add_argument(
        "--coordinators", type=int, default=1,
        help="coordinator replicas on the one database (needs --postgres); client process i talks to "
        "replica i mod N",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.coordinators > 1 and not args.postgres:
        p.error("--coordinators: several replicas share a PostgreSQL database; add --postgres")
    args.ladder = [
        int(n) for n in (args.ladder or ("500" if args.quick else "1000,2500,5000,10000")).split(",")
    ]
    args.window = args.window or (20.0 if args.quick else 60.0)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the ladder, print the table, write the JSON."""
    import httpx

    from phage.testing import CoordinatorProcess, stop_all
    from phage.testing_postgres import PostgresServer

    args = parse_args(argv)
    started = time.time()
    fd_limit = raise_fd_limit()
    machine = machine_info()
    print(
        f"bench/heartbeats.py on {machine['cpu_model']} ({machine['cores']} cores, "
        f"{machine['memory_gib']} GiB), "
        f"{machine['os']}, Python {machine['python']}; open-file limit {fd_limit}",
        flush=True,
    )
    if fd_limit < max(args.ladder) + 1000:
        print(f"warning: open-file limit {fd_limit} is low for {max(args.ladder)} nodes", flush=True)
    if args.quiet_threshold < 100:
        wait_for_quiet(args.quiet_threshold, args.quiet_wait)
    rows: list[dict[str, Any]] = []
    stopped: str | None = None
    tmp = Path(tempfile.mkdtemp(prefix="phage-hb-bench-"))
    # every simulated node enrolls from this one address: lift the per-source enrollment budgets
    coord_env = {
        "PHAGE_REGISTER_BURST": "1000000",
        "PHAGE_NEW_NODES_BURST": "1000000",
        **dict(kv.split("=", 1) for kv in args.coordinator_env),
    }
    server: PostgresServer | None = None
    coords: list[CoordinatorProcess] = []
    pool: Pool | None = None
    try:
        url = None
        if args.postgres:
            server = PostgresServer().init().start()
            url = server.create_database("heartbeats")
        for _ in range(args.coordinators):
            # replicas share one data directory (its CA and join token), as a real deployment does
            coords.append(
                CoordinatorProcess(
                    tmp / "coord", heartbeat_s=args.interval, env=coord_env, database_url=url
                ).start(timeout=60)
            )
        info = coords[0].info
        pool = Pool(
            args.procs,
            {
                "join_token": info["join_token"],
                "ca_fingerprint": info["ca_fingerprint"],
                "interval_s": args.interval,
                "rpc_timeout_s": args.rpc_timeout,
                "enroll_concurrency": args.enroll_concurrency,
                "long_poll": args.long_poll,
                "seed": args.seed,
            },
            [(c.grpc_address, c.enroll_address) for c in coords],
        )
        coord_pids = [c.proc.pid for c in coords if c.proc is not None]
        db_pids = [server.pid()] if server is not None else []
        current = 0
        with coords[0].client() as http:
            http.timeout = httpx.Timeout(120)
            for target in args.ladder:
                row = measure_step(args, coord_pids, db_pids, pool, target, current, http)
                current = target
                rows.append(row)
                why = saturated(row, args)
                if why:
                    row["saturated"] = why
                    print(f"  saturated at {target} nodes: {why}", flush=True)
                    if not args.keep_going:
                        stopped = why
                        break
    finally:
        if pool is not None:
            pool.close()
        stop_all(coords)
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        print_table(rows, args)
    held = [r["nodes"] for r in rows if not r.get("saturated")]
    verdict = (
        f"held {max(held):,} nodes" if held else "saturated at the first step"
    ) + f" (goal ≥ 10,000){'; stopped: ' + stopped if stopped else ''}"
    print(verdict)
    all_lat = [r["latency"]["p99_ms"] for r in rows]
    path = write_results(
        "heartbeats",
        clean_nan(
            {
                "bench": "heartbeats",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": vars(args),
                "machine": {**machine, "open_file_limit": fd_limit},
                "wall_s": round(time.time() - started, 1),
                "verdict": verdict,
                "max_p99_ms": max(all_lat) if all_lat else None,
                "p99_of_p99_ms": percentile(all_lat, 99) if all_lat else None,
                "steps": rows,
            }
        ),
    )
    md = path.with_suffix(".md")
    md.write_text(markdown(rows) + f"\n{verdict}\n")
    print(f"wrote {path} and {md.name}")
    print(f"total wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
