"""Many jobs across several node processes: every one verified with the right output, all seen on the feed."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final, wait_until
from tests.integration.conftest import collect_feed, job


def test_200_jobs_on_3_nodes_all_verified_with_outputs_and_feed(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]],
) -> None:
    coord, _nodes = pool(nodes=3, concurrency=4)
    wait_online(coord, 3)
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    feeder, ready = collect_feed(coord, events, stop)
    assert ready.wait(10)

    with coord.client() as c:
        resp = c.post("/api/tasks", json={"tasks": [job(f"value-{i}") for i in range(200)]})
        assert resp.status_code == 201, resp.text
        ids = [t["id"] for t in resp.json()["tasks"]]
        assert len(set(ids)) == 200
        final = wait_tasks_final(coord, ids, timeout=240)
        assert [t["state"] for t in final] == ["verified"] * 200
        used_nodes = set()
        for i, t in enumerate(final):
            assert t["result"]["exit_code"] == 0
            assert [o["path"] for o in t["result"]["outputs"]] == ["out/result.txt"]
            body = c.get(f"/api/tasks/{t['id']}/outputs/out/result.txt")
            assert body.status_code == 200
            assert body.text == f"value-{i}"
            assert len(t["attempts"]) == 1 and t["attempts"][0]["state"] == "succeeded"
            used_nodes.add(t["attempts"][0]["node_id"])
        assert len(used_nodes) == 3, "work should spread over all three nodes"

    wait_until(
        lambda: sum(1 for e in events if e.get("type") == "task" and e["state"] == "verified") >= 200,
        10,
        what="feed to show every verification",
    )
    stop.set()
    feeder.join(5)
    seen: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e.get("type") == "task":
            seen[e["id"]].append(e["state"])
    for tid in ids:
        assert seen[tid] == ["queued", "dispatched", "running", "verified"], (tid, seen[tid])
