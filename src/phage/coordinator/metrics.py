"""Prometheus metrics at ``GET /metrics``, in a registry of the app's own.

Two sources:

- **Live state, read at scrape time** (:class:`PoolCollector`): nodes by state,
  per-node heartbeat age, slots, GPU figures and reputation counters, queue depth
  by kind, tasks by state in the store, the coordinator's own counters.
- **The live feed** (:class:`~phage.coordinator.observe.TaskObserver`): queue
  wait before dispatch and run time as histograms, task outcomes, and tokens
  generated (read from the store once a generate task finishes, since feed events
  carry no token counts). These count what happened while this process watched:
  they start at zero when the coordinator starts, as Prometheus counters do.

``/metrics`` needs no API key, as scrapers expect; it shows node ids, names and
figures but no task contents. Keep the HTTP port on a network you trust, or put
the endpoint behind a proxy, if that is too much.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from phage import __version__
from phage.coordinator.chat_metrics import ChainCollector, ChatMetrics
from phage.coordinator.observe import OUTCOMES, Finished, TaskObserver, observer_for, start_soon
from phage.domain import NodeState, TaskKind, TaskState

if TYPE_CHECKING:
    from phage.coordinator.core import Coordinator

log = logging.getLogger("phage.metrics")

WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
REPUTATION_RESULTS = {
    "validated": "passed",
    "failed_validation": "failed",
    "attestation_refusals": "attestation_refused",
}
"""Node reputation counters (``Node.reputation``) as the ``result`` label of validations."""


class PoolCollector(Collector):
    """Gauges and counters read from the coordinator's memory when Prometheus scrapes."""

    def __init__(self, coordinator: Coordinator, observer: TaskObserver) -> None:
        self._c = coordinator
        self._observer = observer
        self.task_counts: dict[str, int] = {}
        """Tasks per state in the store; refreshed by the /metrics handler just before a scrape."""

    def collect(self) -> Iterable[Metric]:
        """Every figure, as of now."""
        c = self._c
        info = GaugeMetricFamily("phage_build_info", "phage version of this coordinator", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "phage_coordinator_start_time_seconds",
            "When this coordinator process started (unix time)",
            value=c.started_at,
        )
        yield from self._nodes()
        depth = GaugeMetricFamily("phage_queue_depth", "Tasks waiting for a node, by kind", labels=["kind"])
        by_kind = {k.value: 0 for k in TaskKind} | c.queue.depth_by_kind()
        for kind, n in sorted(by_kind.items()):
            depth.add_metric([kind], n)
        yield depth
        tasks = GaugeMetricFamily("phage_tasks", "Tasks in the store, by state", labels=["state"])
        for state, n in sorted(({s.value: 0 for s in TaskState} | self.task_counts).items()):
            tasks.add_metric([state], n)
        yield tasks
        yield GaugeMetricFamily(
            "phage_open_attempts", "Assignments held by nodes right now", value=len(c.pool.attempts)
        )
        yield CounterMetricFamily(
            "phage_tasks_submitted", "Tasks accepted by this process", value=c.counters.submitted
        )
        yield CounterMetricFamily(
            "phage_tasks_requeued",
            "Times a task went back to the queue for another attempt",
            value=c.counters.requeued,
        )
        yield CounterMetricFamily(
            "phage_feed_events_dropped",
            "Feed events the metrics observer missed because it fell behind (timings are then incomplete)",
            value=self._observer.dropped,
        )

    def _nodes(self) -> Iterable[Metric]:
        c = self._c
        now = time.time()
        live = list(c.pool.nodes.values())
        by_state = GaugeMetricFamily("phage_nodes", "Nodes known to the pool, by state", labels=["state"])
        for state in NodeState:
            if state is not NodeState.REMOVED:  # removed nodes leave the pool
                by_state.add_metric([state.value], sum(1 for n in live if n.node.state is state))
        yield by_state
        yield GaugeMetricFamily(
            "phage_nodes_quarantined",
            "Nodes that get no work until an admin releases them",
            value=sum(1 for n in live if n.node.quarantined),
        )
        online = [n for n in live if n.online]
        yield GaugeMetricFamily(
            "phage_slots", "Task slots on online nodes", value=sum(n.node.max_concurrency for n in online)
        )
        yield GaugeMetricFamily(
            "phage_slots_busy",
            "Task slots on online nodes in use",
            value=sum(len(n.attempts) for n in online),
        )
        labels = ["node", "name"]
        age = GaugeMetricFamily(
            "phage_node_heartbeat_age_seconds", "Seconds since the node was last heard from", labels=labels
        )
        up = GaugeMetricFamily("phage_node_up", "1 while the node is online", labels=labels)
        quarantined = GaugeMetricFamily("phage_node_quarantined", "1 while quarantined", labels=labels)
        active = GaugeMetricFamily("phage_node_active_tasks", "Assignments the node holds", labels=labels)
        validations = CounterMetricFamily(
            "phage_node_validations",
            "Checks of the node's results: passed, failed (re-verification) or attestation_refused",
            labels=[*labels, "result"],
        )
        gpu_labels = [*labels, "gpu", "model"]
        vram_used = GaugeMetricFamily(
            "phage_node_gpu_vram_used_bytes", "GPU memory in use", labels=gpu_labels
        )
        vram_total = GaugeMetricFamily("phage_node_gpu_vram_total_bytes", "GPU memory", labels=gpu_labels)
        util = GaugeMetricFamily(
            "phage_node_gpu_utilization_ratio", "GPU busy fraction (0-1)", labels=gpu_labels
        )
        temp = GaugeMetricFamily("phage_node_gpu_temperature_celsius", "GPU temperature", labels=gpu_labels)
        for n in live:
            node = [n.node.id, n.node.name]
            age.add_metric(node, max(0.0, now - (n.last_seen or n.node.last_heartbeat)))
            up.add_metric(node, 1 if n.online else 0)
            quarantined.add_metric(node, 1 if n.node.quarantined else 0)
            active.add_metric(node, len(n.attempts))
            counts = dict.fromkeys(REPUTATION_RESULTS.values(), 0)
            for key, value in n.node.reputation.items():
                result = REPUTATION_RESULTS.get(key, key)
                counts[result] = counts.get(result, 0) + int(value)
            for result, value in sorted(counts.items()):
                validations.add_metric([*node, result], value)
            gpus = n.metrics.get("gpus") or n.node.hardware.get("gpus") or []
            for i, gpu in enumerate(gpus):
                g = [*node, str(gpu.get("index", i)), str(gpu.get("model", ""))]
                vram_used.add_metric(g, float(gpu.get("vram_used_bytes", 0)))
                vram_total.add_metric(g, float(gpu.get("vram_total_bytes", 0)))
                if gpu.get("utilization") is not None:
                    util.add_metric(g, float(gpu["utilization"]))
                if gpu.get("temperature_c") is not None:
                    temp.add_metric(g, float(gpu["temperature_c"]))
        yield from (age, up, quarantined, active, validations, vram_used, vram_total, util, temp)


class FeedMetrics:
    """Histograms and counters fed by the task observer."""

    def __init__(self, coordinator: Coordinator, registry: CollectorRegistry) -> None:
        self._c = coordinator
        self.wait = Histogram(
            "phage_task_dispatch_latency_seconds",
            "Time a task waited in the queue before a node took it (each dispatch, retries included)",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.run = Histogram(
            "phage_task_duration_seconds",
            "Time from a task's first dispatch to its final state",
            ["kind", "outcome"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            "phage_tasks_finished", "Tasks that reached a final state", ["kind", "outcome"], registry=registry
        )
        self.tokens = Counter(
            "phage_generated_tokens",
            "Completion tokens reported by every attempt of generate tasks that finished",
            ["model"],
            registry=registry,
        )
        for kind in TaskKind:  # series that exist from the start make rate() and alerts simpler
            for outcome in OUTCOMES:
                self.outcomes.labels(kind.value, outcome)
        self._wait_by_kind: dict[str, Histogram] = {}
        self._finish_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._token_work: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self._worker: asyncio.Task[None] | None = None

    def on_dispatch(self, kind: str, wait_s: float) -> None:
        """A node took a task."""
        child = self._wait_by_kind.get(kind)
        if child is None:  # labels() costs more than the observation; runs on every dispatch
            child = self._wait_by_kind[kind] = self.wait.labels(kind)
        child.observe(wait_s)

    def on_finish(self, done: Finished) -> None:
        """A task reached a final state."""
        key = (done.kind, done.outcome)
        children = self._finish_children.get(key)
        if children is None:
            children = self._finish_children[key] = (self.outcomes.labels(*key), self.run.labels(*key))
        children[0].inc()
        if done.run_s is not None:
            children[1].observe(done.run_s)
        if done.outcome != "cancelled" and done.kind in (TaskKind.GENERATE.value, "unknown"):
            with contextlib.suppress(asyncio.QueueFull):  # better a missed count than unbounded memory
                self._token_work.put_nowait(done.task_id)

    def start(self) -> None:
        """Start counting tokens (reads the store, so off the event path)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._count_tokens(), name="phage-tokens")

    async def _count_tokens(self) -> None:
        while True:
            task_id = await self._token_work.get()
            try:
                task = await self._c.store.get_task(task_id)
                if task is None or task.kind is not TaskKind.GENERATE:
                    continue
                for att in await self._c.store.attempts_for(task_id):
                    if att.result is not None and att.result.completion_tokens:
                        model = att.result.model or (task.spec.model or "")
                        self.tokens.labels(model).inc(att.result.completion_tokens)
            except Exception:
                log.exception("could not count the tokens of task %s", task_id)


def install_metrics(app: FastAPI, coordinator: Coordinator) -> None:
    """Serve ``GET /metrics`` (Prometheus text format, no API key) from a registry of this app's own."""
    registry = CollectorRegistry(auto_describe=True)
    observer = observer_for(app, coordinator)
    pool = PoolCollector(coordinator, observer)
    registry.register(pool)
    feed = FeedMetrics(coordinator, registry)
    observer.on_dispatch.append(feed.on_dispatch)
    observer.on_finish.append(feed.on_finish)
    start_soon(app, "metrics-tokens", feed.start)
    coordinator.meter.observers.append(ChatMetrics(registry, coordinator.checker.stats).observe)
    registry.register(
        ChainCollector(lambda: c.stats if (c := coordinator.sharded_chat) is not None else None)
    )
    app.state.phage_metrics_registry = registry

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: pool, queue, task timings and outcomes, per-node health.

        Text format 0.0.4 by default; OpenMetrics when the scraper's ``Accept`` asks for it.
        """
        pool.task_counts = await coordinator.store.count_tasks()
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})
