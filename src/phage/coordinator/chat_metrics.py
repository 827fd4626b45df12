"""Chat in ``/metrics`` and the chat access log.

Every metered request (chat, or a generate task's attempt) passes here once, when it
is settled: requests by model, node, kind and outcome; time to first token and time
between tokens as histograms; tokens charged; and, from the checker, checks done,
failed and impossible, with the node-seconds they cost. The same moment writes one
access-log line (logger ``phage.access``): who, what model, which node, how many
tokens, how it ended — no prompt or answer text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from phage.coordinator.chat_check import CheckStats
from phage.dataplane.generation import ChainStats
from phage.store.sql_usage import RequestRecord

access = logging.getLogger("phage.access")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OK_OUTCOMES = {"stop", "length", "passed", "failed"}


class ChatMetrics:
    """Observes settled requests into the app's registry."""

    def __init__(self, registry: CollectorRegistry, checks: CheckStats) -> None:
        labels = ["model", "node", "kind"]
        self.requests = Counter(
            "phage_chat_requests", "Metered requests, by model, node, kind and outcome",
            [*labels, "outcome"], registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "phage_chat_errors", "Requests that did not finish (the client left or stalled, the node failed)",
            [*labels, "outcome"], registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "phage_chat_tokens", "Tokens charged, by model, node, kind and type (prompt or completion)",
            [*labels, "type"], registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "phage_chat_time_to_first_token_seconds", "From the request's admission to its first token",
            ["model", "node"], buckets=TTFT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.itl = Histogram(
            "phage_chat_inter_token_seconds", "Mean time between tokens after the first, per request",
            ["model", "node"], buckets=ITL_BUCKETS, registry=registry,
        )  # fmt: skip
        registry.register(_CheckCollector(checks))

    def observe(self, r: RequestRecord) -> None:
        """One settled request."""
        node = r.node_id[:16]
        self.requests.labels(r.model, node, r.kind, r.outcome).inc()
        if r.outcome not in OK_OUTCOMES:
            self.errors.labels(r.model, node, r.kind, r.outcome).inc()
        if r.prompt_tokens:
            self.tokens.labels(r.model, node, r.kind, "prompt").inc(r.prompt_tokens)
        if r.completion_tokens:
            self.tokens.labels(r.model, node, r.kind, "completion").inc(r.completion_tokens)
        if r.ttft_s is not None:
            self.ttft.labels(r.model, node).observe(r.ttft_s)
            if r.completion_tokens > 1:
                self.itl.labels(r.model, node).observe((r.duration_s - r.ttft_s) / (r.completion_tokens - 1))
        access.info(
            "%s key=%s model=%s node=%s prompt=%d completion=%d outcome=%s ttft=%s duration=%.3f",
            r.kind,
            r.key_id,
            r.model,
            node or "-",
            r.prompt_tokens,
            r.completion_tokens,
            r.outcome,
            "-" if r.ttft_s is None else f"{r.ttft_s:.3f}",
            r.duration_s,
        )


class _CheckCollector(Collector):
    def __init__(self, checks: CheckStats) -> None:
        self._checks = checks

    def collect(self) -> Iterable[Metric]:
        s = self._checks
        verdicts = CounterMetricFamily("phage_chat_checks", "Checked-chat verdicts", labels=["verdict"])
        verdicts.add_metric(["pass"], s.checked - s.failed)
        verdicts.add_metric(["fail"], s.failed)
        verdicts.add_metric(["unchecked"], s.unchecked)
        yield verdicts
        yield CounterMetricFamily("phage_chat_checked_tokens", "Answer tokens re-scored", value=s.tokens)
        yield CounterMetricFamily(
            "phage_chat_check_node_seconds", "Time checking nodes spent re-scoring answers", value=s.seconds
        )


class ChainCollector(Collector):
    """Sharded models' chain steps: node to node or through the coordinator, and failovers."""

    def __init__(self, stats: Callable[[], ChainStats | None]) -> None:
        self._stats = stats
        """The sharded chat's counters, once the coordinator has started it."""

    def collect(self) -> Iterable[Metric]:
        s = self._stats() or ChainStats()
        steps = CounterMetricFamily(
            "phage_sharded_chain_steps",
            "Steps through chains of nodes: each node handing its output straight to the next, "
            "or every output back through the coordinator (checked or relayed nodes, or nodes "
            "that cannot reach each other)",
            labels=["path"],
        )
        steps.add_metric(["node-to-node"], s.node_to_node)
        steps.add_metric(["through-coordinator"], s.through_driver)
        yield steps
        yield CounterMetricFamily(
            "phage_sharded_failovers", "Chain nodes replaced mid-generation", value=s.failovers
        )
