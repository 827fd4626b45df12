"""Many simulated nodes in one process: real enrollment, real mutual-TLS RPCs, the node's own retries.

Each :class:`SimNode` is a real member of the pool: it makes its own Ed25519 identity and TLS key,
enrolls with the join token (pinned CA, CSR), gets its own certificate and opens its own mutual-TLS
channel with the node's channel options. On the wire it then behaves as an idle ``phage node``: a
``Heartbeat`` every interval (the first at a random phase, so beats spread as they do in a pool that
joined over time) and one ``FetchTask`` long-poll held open, each retried after a failure with the
node's own backoff (:func:`~phage.node.endpoints.heartbeat_backoff`,
:func:`~phage.node.endpoints.fetch_backoff`). There is no engine, sandbox or hardware probe, so a
thousand fit in one process.

Every RPC attempt is recorded (when, which, whether it succeeded), on the event loop's clock
(``time.monotonic``), so a test or benchmark can see how nodes spread their attempts when a
coordinator goes away and comes back: every long-poll breaks at the same instant then, which is
the thundering herd jittered backoff exists to prevent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from phage.node.connection import enroll, open_channel
from phage.node.endpoints import Backoff, fetch_backoff, heartbeat_backoff
from phage.pki.identity import NodeIdentity
from phage.protocol import convert
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.testing import CoordinatorProcess


@dataclass(frozen=True, slots=True)
class Attempt:
    """One RPC a simulated node made."""

    t: float
    """When it was sent (``time.monotonic()``)."""
    node: int
    kind: str
    """``heartbeat`` or ``fetch``."""
    ok: bool


class _Ceiling(random.Random):
    """A "random" source that always picks the top of the range: backoff without jitter (lockstep)."""

    def uniform(self, a: float, b: float) -> float:
        """The ceiling, every time."""
        return b


@dataclass
class SimNode:
    """One simulated node: its identity and channel."""

    index: int
    node_id: str
    channel: grpc.aio.Channel
    stub: Any
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Swarm:
    """Simulated nodes of one pool, driven from the caller's event loop."""

    def __init__(
        self,
        *,
        grpc_address: str,
        enroll_address: str,
        join_token: str,
        ca_fingerprint: str,
        interval_s: float,
        fetch_wait_ms: int = 20_000,
        enroll_concurrency: int = 16,
        seed: int = 0,
        jitter: bool = True,
    ) -> None:
        self.grpc_address = grpc_address
        self.enroll_address = enroll_address
        self.join_token = join_token
        self.ca_fingerprint = ca_fingerprint
        self.interval_s = interval_s
        self.fetch_wait_ms = fetch_wait_ms
        self.enroll_concurrency = enroll_concurrency
        self.seed = seed
        self.jitter = jitter
        """False: every retry waits the full ceiling (what nodes did before jitter), for comparison."""
        self.nodes: list[SimNode] = []
        self.attempts: list[Attempt] = []
        self.enroll_failures: Counter[str] = Counter()
        self.lags: list[tuple[float, float]] = []
        """(when, how late) a 50 ms tick of this process's event loop ran: the swarm's own lag."""
        self._ticker: asyncio.Task[None] | None = None

    @classmethod
    def joining(cls, coord: CoordinatorProcess, *, interval_s: float, **options: Any) -> Swarm:
        """Simulated nodes for a running coordinator process: its addresses, join token and CA pin."""
        info = coord.info
        return cls(
            grpc_address=coord.grpc_address,
            enroll_address=coord.enroll_address,
            join_token=info["join_token"],
            ca_fingerprint=info["ca_fingerprint"],
            interval_s=interval_s,
            **options,
        )

    def _rng(self, index: int, stream: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + index * 2 + stream) if self.jitter else _Ceiling()

    def _info(self, index: int) -> dict[str, object]:
        return {
            "name": f"sim-{index}",
            "hostname": f"sim-{index}",
            "cpu_count": 4,
            "memory_total_bytes": 8 << 30,
            "sandboxes": ["none"],
            "max_concurrency": 1,
            "phage_version": "simulated",
        }

    async def enroll(self, count: int) -> None:
        """Enroll ``count`` more nodes, each with its own identity and certificate (retried if refused)."""
        sem = asyncio.Semaphore(self.enroll_concurrency)
        base = len(self.nodes)

        async def one(index: int) -> SimNode | None:
            async with sem:
                identity = NodeIdentity.generate()
                for attempt in range(5):
                    try:
                        creds = await enroll(
                            identity,
                            enroll_address=self.enroll_address,
                            join_token=self.join_token,
                            ca_fingerprint=self.ca_fingerprint,
                            info=self._info(index),
                        )
                    except Exception as exc:  # the coordinator may be swamped: count it and retry
                        self.enroll_failures[type(exc).__name__] += 1
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    channel = open_channel(self.grpc_address, identity, creds)
                    stub = pb_grpc.PhageCoordinatorStub(channel)  # type: ignore[no-untyped-call]
                    return SimNode(index, identity.node_id, channel, stub)
                return None

        made = await asyncio.gather(*(one(base + i) for i in range(count)))
        self.nodes.extend(n for n in made if n is not None)

    def start(self) -> None:
        """Start every node's heartbeat loop and long-poll."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())
        for node in self.nodes:
            if not node.tasks:
                node.tasks = [
                    asyncio.create_task(self._heartbeats(node)),
                    asyncio.create_task(self._long_poll(node)),
                ]

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.05
            await asyncio.sleep(0.05)
            self.lags.append((due, loop.time() - due))

    async def _heartbeats(self, node: SimNode) -> None:
        loop = asyncio.get_running_loop()
        rng = self._rng(node.index, 0)
        backoff = heartbeat_backoff(self.interval_s, rng)
        request = pb.HeartbeatRequest(
            node_id=node.node_id, metrics=convert.metrics_from_dict({"cpu_percent": 1.0})
        )
        await asyncio.sleep(random.Random(node.index).uniform(0, self.interval_s))
        while True:
            t = loop.time()
            try:
                await node.stub.Heartbeat(request, timeout=max(2.0, self.interval_s))
            except grpc.aio.AioRpcError:
                self.attempts.append(Attempt(t, node.index, "heartbeat", False))
                await backoff.wait()
                continue
            self.attempts.append(Attempt(t, node.index, "heartbeat", True))
            backoff.reset()
            await asyncio.sleep(self.interval_s)

    async def _long_poll(self, node: SimNode) -> None:
        loop = asyncio.get_running_loop()
        backoff: Backoff = fetch_backoff(self._rng(node.index, 1))
        request = pb.FetchTaskRequest(node_id=node.node_id, max_tasks=1, wait_ms=self.fetch_wait_ms)
        while True:
            t = loop.time()
            try:
                await node.stub.FetchTask(request, timeout=self.fetch_wait_ms / 1000 + 10)
            except grpc.aio.AioRpcError:
                self.attempts.append(Attempt(t, node.index, "fetch", False))
                await backoff.wait()
                continue
            self.attempts.append(Attempt(t, node.index, "fetch", True))
            backoff.reset()

    def first_success_after(self, t: float, kind: str = "heartbeat") -> dict[int, float]:
        """Per node, when its first successful ``kind`` RPC sent at or after ``t`` was sent."""
        out: dict[int, float] = {}
        for a in self.attempts:
            if a.ok and a.kind == kind and a.t >= t and a.t < out.get(a.node, float("inf")):
                out[a.node] = a.t
        return out

    def between(self, start: float, end: float) -> list[Attempt]:
        """Attempts sent in ``[start, end)``."""
        return [a for a in self.attempts if start <= a.t < end]

    async def close(self) -> None:
        """Stop every node and close its channel."""
        tasks = [t for n in self.nodes for t in n.tasks]
        if self._ticker is not None:
            tasks.append(self._ticker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.channel.close(None)


def peak_share(times: Sequence[float], nodes: int, window_s: float = 0.1) -> float:
    """The largest share of ``nodes`` whose attempts fall in one ``window_s`` window (1.0: all at once)."""
    if not times or not nodes:
        return 0.0
    return max(Counter(int(t / window_s) for t in times).values()) / nodes


@dataclass(frozen=True, slots=True)
class ReconnectReport:
    """How a swarm came back after its coordinator restarted."""

    nodes: int
    jitter: bool
    stop_s: float
    """From the stop signal until the old coordinator process had exited."""
    first_answer_s: float
    """From the stop signal until the new coordinator answered its first node."""
    healthz_s: float
    """From the stop signal until the new coordinator answered ``/healthz`` (start-up under load)."""
    outage_fetch_attempts: int
    """Long-poll retries sent while no coordinator answered (from a second after the old one exited)."""
    outage_fetch_peak_share: float
    """The largest share of nodes retrying their long-poll in one 100 ms window meanwhile."""
    back: int
    """Nodes with a successful heartbeat to the new coordinator."""
    back_p50_s: float
    back_p90_s: float
    back_max_s: float
    """When nodes' first successful heartbeats were sent, after the new coordinator's first answer."""
    back_peak_share: float
    """The largest share of nodes whose first heartbeat back fell in one 100 ms window."""
    back_windows: int
    """100 ms windows those first heartbeats spread over."""
    online_fresh: int
    """Nodes the coordinator counts online and heard from since it restarted."""
    swarm_lag_p99_s: float
    swarm_lag_max_s: float
    """How late the simulating process's own event loop ran meanwhile: lag bunches attempts together."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _percentile(values: Sequence[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q / 100 * len(data)))] if data else float("nan")


def _fresh_online(coord: CoordinatorProcess, since: float) -> int:
    with coord.client() as http:
        nodes = http.get("/api/nodes").json()["nodes"]
    age = time.time() - since
    return sum(1 for n in nodes if n["state"] == "online" and n["heartbeat_age_s"] <= age)


async def wait_all_online(coord: CoordinatorProcess, count: int, *, since: float, within_s: float) -> int:
    """Poll until ``count`` nodes are online and heard from since ``since`` (wall clock); how many were."""
    deadline = time.monotonic() + within_s
    seen = 0
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(_fresh_online, coord, since)
        if seen >= count:
            break
        await asyncio.sleep(0.25)
    return seen


async def restart_and_reconnect(
    coord: CoordinatorProcess, swarm: Swarm, *, within_s: float, down_s: float = 0.0
) -> ReconnectReport:
    """Restart the coordinator under a running swarm and measure how its nodes come back.

    Nodes must be enrolled, started and online. The coordinator is stopped (SIGTERM: every long-poll
    breaks at once) and started again on the same ports, data and database; then this waits until
    every node has a successful heartbeat and the coordinator counts them all online again. Times
    are taken on the nodes' side, from when each attempt was sent. ``down_s`` keeps the coordinator
    stopped at least that long: on a quiet machine it restarts within a second or two, too soon to
    see the nodes' retries while it is down.
    """
    nodes = len(swarm.nodes)
    t_stop = time.monotonic()
    await asyncio.to_thread(coord.stop)
    t_down, wall_down = time.monotonic(), time.time()
    await asyncio.sleep(down_s)
    await asyncio.to_thread(coord.start, 60.0)
    t_up = time.monotonic()
    deadline = t_up + within_s
    while len(swarm.first_success_after(t_down)) < nodes and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = max(1.0, deadline - time.monotonic())
    fresh = await wait_all_online(coord, nodes, since=wall_down, within_s=left)
    firsts = swarm.first_success_after(t_down)
    answered = [a.t for a in swarm.attempts if a.ok and a.t >= t_down]
    t_first = min(answered) if answered else t_up
    outage = [a.t for a in swarm.between(t_down + 1.0, t_first) if a.kind == "fetch"]
    back = sorted(t - t_first for t in firsts.values())
    lags = [lag for t, lag in swarm.lags if t >= t_stop]
    return ReconnectReport(
        nodes=nodes,
        jitter=swarm.jitter,
        stop_s=round(t_down - t_stop, 2),
        first_answer_s=round(t_first - t_stop, 2),
        healthz_s=round(t_up - t_stop, 2),
        outage_fetch_attempts=len(outage),
        outage_fetch_peak_share=round(peak_share(outage, nodes), 3),
        back=len(back),
        back_p50_s=round(_percentile(back, 50), 3),
        back_p90_s=round(_percentile(back, 90), 3),
        back_max_s=round(back[-1], 3) if back else float("nan"),
        back_peak_share=round(peak_share(back, nodes), 3),
        back_windows=len({int(t / 0.1) for t in back}),
        online_fresh=fresh,
        swarm_lag_p99_s=round(_percentile(lags, 99), 3),
        swarm_lag_max_s=round(max(lags, default=float("nan")), 3),
    )
