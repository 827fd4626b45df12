"""Structured logs: every line JSON when asked, and a request id carried from the HTTP edge to the node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

pytestmark = pytest.mark.backend_neutral  # log lines and request ids; the store is not what is tested


def _records(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must parse: nothing else on the stream


def test_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    coord = CoordinatorProcess(tmp_path / "coordinator", env={"PHAGE_LOG_FORMAT": "json"}).start()
    node = NodeProcess(coord, tmp_path / "node", env={"PHAGE_NODE_LOG_FORMAT": "json"}).start()
    try:
        wait_online(coord, 1)
        with coord.client() as c:
            answer = c.get("/api/status", headers={"X-Request-ID": "trace-42"})
            assert answer.headers["x-request-id"] == "trace-42"
            made = c.post("/api/tasks", json={"kind": "noop"}, headers={"X-Request-ID": "bad id with spaces"})
            minted = made.headers["x-request-id"]
            assert minted.startswith("req-") and minted != "bad id with spaces"  # refused, replaced
        assert httpx.get(coord.url + "/healthz").headers["x-request-id"].startswith("req-")

        assert coord.log_path is not None
        log = coord.log_path

        def access_for(rid: str) -> dict[str, Any] | None:
            return next((r for r in _records(log) if r.get("request_id") == rid), None)

        status_line = wait_until(lambda: access_for("trace-42"), 10, what="the access record")
        assert status_line["logger"] == "phage.access" and status_line["path"] == "/api/status"
        assert status_line["status"] == 200 and status_line["duration_ms"] >= 0
        assert wait_until(lambda: access_for(minted), 10, what="the submit record")["method"] == "POST"
        ready = next(r for r in _records(log) if r["message"] == "ready")
        assert ready["ca_fingerprint"] == coord.info["ca_fingerprint"]
        assert not any("alembic" in r["logger"] for r in _records(log))

        node_log = tmp_path / "node.log"
        started = wait_until(
            lambda: next((r for r in _records(node_log) if r.get("sandbox")), None), 10, what="node record"
        )
        assert started["level"] == "info" and started["node_id"]

        # the id of the request that submitted a task follows it to the node that runs it
        with coord.client() as c:
            task_id = c.post("/api/tasks", json={"kind": "noop"}, headers={"X-Request-ID": "trace-7"}).json()[
                "id"
            ]
        ran = wait_until(
            lambda: next((r for r in _records(node_log) if r.get("task_id") == task_id), None),
            30,
            what="the node's record of running the task",
        )
        assert ran["request_id"] == "trace-7" and ran["logger"].startswith("phage.node")
    finally:
        node.stop()
        coord.stop()
