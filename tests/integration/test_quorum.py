"""An open pool of five untrusted node processes, one of which returns wrong outputs for every job.

The liar is a real ``phage node`` with the fault-injection hook on (``node/faults.py``): it runs each
job, replaces its outputs with other bytes, then hashes, uploads, signs and reports them like an
honest node. Quorum validation (``domain/quorum.py``) must keep every wrong result out, and the
quorum that shows the liar wrong must quarantine it with the evidence.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_tasks_final
from tests.integration.conftest import job

JOBS = 100
NODES = 5


@pytest.fixture
def open_pool(tmp_path: Path) -> Iterator[tuple[CoordinatorProcess, list[NodeProcess]]]:
    """A coordinator admitting anyone as untrusted, four honest nodes and one liar (``nodes[0]``)."""
    coord = CoordinatorProcess(tmp_path / "coordinator", env={"PHAGE_ADMISSION": "open"}).start()
    nodes: list[NodeProcess] = []
    try:
        for i in range(NODES):
            env = {"PHAGE_TEST_CORRUPT_OUTPUTS": "1"} if i == 0 else {}
            name = "liar" if i == 0 else f"honest-{i}"
            nodes.append(NodeProcess(coord, tmp_path / name, name=name, concurrency=2, env=env).start())
        yield coord, nodes
    finally:
        stop_all([*nodes, coord])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_open_pool_accepts_no_wrong_result_and_quarantines_the_liar(
    open_pool: tuple[CoordinatorProcess, list[NodeProcess]],
) -> None:
    coord, nodes = open_pool
    online = wait_online(coord, NODES)
    assert not any(n["trusted"] for n in online), "open admission: every node is untrusted"
    liar_id = nodes[0].node_id

    with coord.client() as c:
        resp = c.post("/api/tasks", json={"tasks": [job(f"value-{i}") for i in range(JOBS)]})
        assert resp.status_code == 201, resp.text
        ids = [t["id"] for t in resp.json()["tasks"]]
        final = wait_tasks_final(coord, ids, timeout=240)

        verified = [t for t in final if t["state"] == "verified"]
        wrong = [
            t
            for i, t in enumerate(final)
            if t["state"] == "verified" and t["result"]["outputs"][0]["sha256"] != _sha256(f"value-{i}")
        ]
        executions = sum(1 for t in final for a in t["attempts"] if a["state"] in ("succeeded", "failed"))
        dispatched = sum(len(t["attempts"]) for t in final)
        by_liar = [a for t in final for a in t["attempts"] if a["node_id"] == liar_id]
        accepted_from_liar = [t for t in final if t["result"]["attempt_id"] in {a["id"] for a in by_liar}]
        print(
            f"\nquorum: {len(verified)}/{JOBS} jobs verified, {len(wrong)} wrong results accepted, "
            f"{executions} executions ({executions - JOBS} extra, {(executions - JOBS) / JOBS:.0%}), "
            f"{dispatched} dispatched, {len(by_liar)} given to the liar"
        )
        assert len(verified) == JOBS, [t["error"] for t in final if t["state"] != "verified"]
        assert wrong == [] and accepted_from_liar == []
        # the accepted bytes are the right ones, not just the hash
        body = c.get(f"/api/tasks/{ids[7]}/outputs/out/result.txt")
        assert body.status_code == 200 and body.text == "value-7"
        # every task the liar voted on shows its (wrong) hash beside the accepted one
        for t in final:
            for a in t["attempts"]:
                if a["node_id"] == liar_id and a["state"] == "succeeded":
                    assert a["output_sha256"] != t["result"]["output_sha256"]

        nodes_now = {n["id"]: n for n in c.get("/api/nodes").json()["nodes"]}
    liar = nodes_now[liar_id]
    assert liar["quarantined"], liar
    reason = liar["quarantine_reason"]
    assert "disagreed with the accepted result" in reason and "agreed by" in reason, reason
    assert liar["reputation"]["disagreements"] >= 1 and liar["reputation"]["streak"] == 0
    honest = [n for nid, n in nodes_now.items() if nid != liar_id]
    assert not any(n["quarantined"] for n in honest)
    assert sum(n["reputation"]["validated"] for n in honest) >= JOBS // 2
    assert all(n["reputation"]["disagreements"] == 0 for n in honest)
    assert executions - JOBS < JOBS, "adaptive replication: fewer than one extra execution per job"

    # the CLI shows the record too
    out = subprocess.run(
        [sys.executable, "-m", "phage.client.cli", "nodes", "--url", coord.url, "--key", coord.admin_key],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
        check=True,
    ).stdout
    assert "disagreed" in out and "validated" in out, out
