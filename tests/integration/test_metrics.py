"""GET /metrics: promtool accepts it, and the numbers match what the pool did."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final, wait_until
from tests.integration.conftest import job

pytestmark = pytest.mark.backend_neutral  # the exposition format and counters, kept in memory

Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PROMTOOL = shutil.which("promtool")


def scrape(coord: CoordinatorProcess) -> tuple[str, Samples]:
    """The /metrics text (fetched without an API key) and its samples by (name, labels)."""
    resp = httpx.get(f"{coord.url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return resp.text, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """One sample's value, or None when the series is absent."""
    return samples.get((metric, frozenset(labels.items())))


def promtool_check(text: str) -> None:
    """promtool lints the exposition; any complaint fails."""
    assert PROMTOOL, "promtool is needed: apt-get install prometheus"
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert not done.stdout.strip() and not done.stderr.strip(), (done.stdout + done.stderr).decode()


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool: apt-get install prometheus")
def test_metrics_after_jobs_are_valid_and_right(pool: Pool) -> None:
    coord, nodes = pool(nodes=2, concurrency=2)
    wait_online(coord, 2)
    text, samples = scrape(coord)
    promtool_check(text)
    assert value(samples, "phage_nodes", state="online") == 2
    assert value(samples, "phage_tasks_finished_total", kind="job", outcome="verified") == 0

    with coord.client() as c:
        good = c.post("/api/tasks", json={"tasks": [job(f"v{i}") for i in range(6)]}).json()["tasks"]
        bad = c.post(
            "/api/tasks",
            json={
                "kind": "job",
                "files": {"x.sh": "exit 3\n"},
                "manifest": {"entrypoint": "x.sh", "interpreter": "sh"},
            },
        ).json()
        slow = c.post("/api/tasks", json=job("slow", sleep=30)).json()
        wait_until(
            lambda: c.get(f"/api/tasks/{slow['id']}").json()["state"] == "running",
            30,
            what="slow job running",
        )
        assert c.delete(f"/api/tasks/{slow['id']}").status_code == 200
        assert c.delete(f"/api/tasks/{slow['id']}").status_code == 200  # a second cancel must not count twice
        final = wait_tasks_final(coord, [t["id"] for t in good] + [bad["id"], slow["id"]])
        assert [t["state"] for t in final] == ["verified"] * 6 + ["failed", "cancelled"]
        quarantined = nodes[0].node_id
        c.post(f"/api/nodes/{quarantined}/quarantine", params={"reason": "metrics test"}).raise_for_status()

    def settled() -> Samples | None:
        _, s = scrape(coord)
        return s if value(s, "phage_tasks_finished_total", kind="job", outcome="cancelled") == 1 else None

    samples = wait_until(settled, 10, what="metrics to count the cancellation")
    text, samples = scrape(coord)
    promtool_check(text)

    # outcomes, from the feed
    assert value(samples, "phage_tasks_finished_total", kind="job", outcome="verified") == 6
    assert value(samples, "phage_tasks_finished_total", kind="job", outcome="failed") == 1
    assert value(samples, "phage_tasks_finished_total", kind="job", outcome="cancelled") == 1
    # ... and agreeing with the store
    assert value(samples, "phage_tasks", state="verified") == 6
    assert value(samples, "phage_tasks", state="failed") == 1
    assert value(samples, "phage_tasks", state="cancelled") == 1
    assert value(samples, "phage_tasks", state="queued") == 0
    assert value(samples, "phage_tasks_submitted_total") == 8
    # every task was dispatched once; all but the cancelled one ran to a verdict
    assert value(samples, "phage_task_dispatch_latency_seconds_count", kind="job") == 8
    latency_sum = value(samples, "phage_task_dispatch_latency_seconds_sum", kind="job")
    assert latency_sum is not None and 0 <= latency_sum < 8 * 30
    assert value(samples, "phage_task_duration_seconds_count", kind="job", outcome="verified") == 6
    assert value(samples, "phage_task_duration_seconds_count", kind="job", outcome="failed") == 1
    assert value(samples, "phage_task_duration_seconds_count", kind="job", outcome="cancelled") == 1
    assert (
        value(samples, "phage_task_duration_seconds_bucket", kind="job", outcome="verified", le="+Inf") == 6
    )
    # pool state
    assert value(samples, "phage_queue_depth", kind="job") == 0
    assert value(samples, "phage_open_attempts") == 0
    assert value(samples, "phage_nodes", state="online") == 2
    assert value(samples, "phage_nodes", state="dead") == 0
    assert value(samples, "phage_nodes_quarantined") == 1
    assert value(samples, "phage_slots") == 4
    assert value(samples, "phage_feed_events_dropped_total") == 0
    for node in nodes:
        labels = {"node": node.node_id, "name": node.name}
        assert value(samples, "phage_node_up", **labels) == 1
        assert value(samples, "phage_node_quarantined", **labels) == (1 if node.node_id == quarantined else 0)
        age = value(samples, "phage_node_heartbeat_age_seconds", **labels)
        assert age is not None and 0 <= age < 5, age  # heartbeats every 0.5 s
        for result in ("passed", "failed", "attestation_refused"):
            assert value(samples, "phage_node_validations_total", **labels, result=result) == 0


def test_metrics_count_generated_tokens(pool: Pool, tiny_model: Path) -> None:
    # a sampled re-verification needs a sandbox on the coordinator; none isolating exists here yet
    coord, _ = pool(
        nodes=2,
        concurrency=1,
        engine="transformers",
        model=str(tiny_model),
        env={"PHAGE_VERIFY_SANDBOX": "none"},
    )
    wait_online(coord, 2, timeout=90)
    gen = {
        "kind": "generate",
        "prompt": "def add(a, b):",
        "model": "tiny-llama",
        "verifier": "test -s output.txt",
        "max_tokens": 16,
        "n": 2,
    }
    with coord.client() as c:
        ids = [c.post("/api/tasks", json=gen).json()["id"] for _ in range(2)]
    final = wait_tasks_final(coord, ids, timeout=180)
    assert [t["state"] for t in final] == ["verified", "verified"]
    tokens = sum(a["completion_tokens"] or 0 for t in final for a in t["attempts"])
    assert tokens > 0

    def counted() -> Samples | None:
        _, s = scrape(coord)
        return s if value(s, "phage_generated_tokens_total", model="tiny-llama") == tokens else None

    samples = wait_until(counted, 10, what=f"phage_generated_tokens_total to reach {tokens}")
    assert value(samples, "phage_tasks_finished_total", kind="generate", outcome="verified") == 2
    assert value(samples, "phage_task_dispatch_latency_seconds_count", kind="generate") == 4  # n=2, twice
    if PROMTOOL:
        promtool_check(scrape(coord)[0])
