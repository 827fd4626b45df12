"""Nothing is lost: a node killed mid-job, and the coordinator killed with work in flight."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final, wait_until
from tests.integration.conftest import job


def test_killed_node_job_is_requeued_and_finishes_elsewhere(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]], request: pytest.FixtureRequest
) -> None:
    coord, nodes = pool(nodes=1, concurrency=1)
    wait_online(coord, 1)
    with coord.client() as c:
        task = c.post("/api/tasks", json=job("survivor", sleep=3)).json()
        wait_until(
            lambda: c.get(f"/api/tasks/{task['id']}").json()["state"] == "running", 20, what="job running"
        )
        victim = nodes[0]
        victim_id = victim.node_id
        # a second node joins only now, so the job cannot have started there first
        rescuer = NodeProcess(coord, victim.key_dir.parent / "rescuer", name="rescuer", concurrency=1).start()
        request.addfinalizer(rescuer.stop)
        wait_online(coord, 2)
        victim.kill()
        dead = wait_until(
            lambda: any(
                n["id"] == victim_id and n["state"] == "dead" for n in c.get("/api/nodes").json()["nodes"]
            ),
            20,
            what="killed node declared dead",
        )
        assert dead
        (final,) = wait_tasks_final(coord, [task["id"]], timeout=60)
        assert final["state"] == "verified"
        attempts = final["attempts"]
        assert [a["state"] for a in attempts] == ["lost", "succeeded"]
        assert attempts[0]["node_id"] == victim_id
        assert attempts[1]["node_id"] == rescuer.node_id != victim_id
        assert "heartbeat" in attempts[0]["error"]
        assert c.get(f"/api/tasks/{task['id']}/outputs/out/result.txt").text == "survivor"


def test_coordinator_killed_and_restarted_loses_nothing(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]],
) -> None:
    coord, _nodes = pool(nodes=2, concurrency=2, heartbeat_s=1.0)
    wait_online(coord, 2)
    with coord.client() as c:
        resp = c.post("/api/tasks", json={"tasks": [job(f"r{i}", sleep=1.5) for i in range(12)]})
        ids = [t["id"] for t in resp.json()["tasks"]]
        wait_until(
            lambda: sum(t["state"] == "running" for t in c.get("/api/tasks?limit=100").json()["tasks"]) >= 2,
            20,
            what="jobs running",
        )
        states = [t["state"] for t in c.get("/api/tasks?limit=100").json()["tasks"]]
        assert "queued" in states and "running" in states
    coord.kill()
    coord.start()  # same data directory, same ports; the nodes reconnect on their own
    final = wait_tasks_final(coord, ids, timeout=120)
    with coord.client() as c:
        for i, t in zip(range(12), final, strict=True):
            assert t["state"] == "verified", t
            succeeded = [a for a in t["attempts"] if a["state"] == "succeeded"]
            assert len(succeeded) == 1, t["attempts"]
            assert c.get(f"/api/tasks/{t['id']}/outputs/out/result.txt").text == f"r{i}"
        online = [n for n in c.get("/api/nodes").json()["nodes"] if n["state"] == "online"]
        assert len(online) == 2
