"""Nodes that know several coordinator addresses: they use one that answers and keep their identity."""

from __future__ import annotations

from pathlib import Path

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final
from tests.integration.conftest import job


def test_a_node_skips_a_dead_address_and_works_through_the_next(tmp_path: Path) -> None:
    dead = CoordinatorProcess(tmp_path / "never-started")  # its ports: nothing listens there
    coord = CoordinatorProcess(tmp_path / "coordinator").start()
    node = NodeProcess(coord, tmp_path / "node", replicas=(dead, coord)).start()
    try:
        (online,) = wait_online(coord, 1)
        assert online["id"] == node.node_id
        with coord.client() as c:
            ids = [c.post("/api/tasks", json=job(f"r{i}")).json()["id"] for i in range(5)]
        final = wait_tasks_final(coord, ids, timeout=60)
        assert [t["state"] for t in final] == ["verified"] * 5
    finally:
        node.stop()
        coord.stop()
