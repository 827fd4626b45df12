"""What API keys may do to the pool: user keys' caps and quotas, blob quotas and collection,
retention of finished tasks."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from phage.testing import CoordinatorProcess
from tests.integration.conftest import job


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    env = {"PHAGE_USER_MAX_OPEN_TASKS": "6"}
    c = CoordinatorProcess(tmp_path_factory.mktemp("api") / "coordinator", heartbeat_s=5.0, env=env).start()
    yield c
    c.stop()


def _user(coord: CoordinatorProcess, name: str) -> httpx.Client:
    with coord.client() as c:
        key = c.post("/api/keys", json={"name": name, "role": "user"}).json()["key"]
    return coord.client(key)


def test_user_keys_cannot_jump_the_queue_or_retry_without_end(coord: CoordinatorProcess) -> None:
    with _user(coord, "erin") as erin:
        over = erin.post("/api/tasks", json=job("x", priority=11))
        assert over.status_code == 403 and over.json()["field"] == "priority"
        assert "10" in over.json()["message"]
        over = erin.post("/api/tasks", json=job("x", max_attempts=6))
        assert over.status_code == 403 and over.json()["field"] == "max_attempts"
        assert "5" in over.json()["message"]
        batch = erin.post("/api/tasks", json={"tasks": [job("a"), job("b", priority=500)]})
        assert batch.status_code == 403 and batch.json()["field"] == "tasks[1].priority"
        many = erin.post("/api/tasks", json={**job("x"), "count": 1001})
        assert many.status_code == 400 and many.json()["field"] == "count"
        assert "1000" in many.json()["message"]
        ok = erin.post("/api/tasks", json=job("x", priority=10, max_attempts=5))
        assert ok.status_code == 201
        erin.delete(f"/api/tasks/{ok.json()['id']}")
    with coord.client() as admin:  # admins keep every knob
        assert admin.post("/api/tasks", json=job("x", priority=1000, max_attempts=100)).status_code == 201


def test_user_key_open_task_quota(coord: CoordinatorProcess) -> None:
    with _user(coord, "frank") as frank:
        first = frank.post("/api/tasks", json={**job("x"), "count": 4})
        assert first.status_code == 201
        over = frank.post("/api/tasks", json={**job("x"), "count": 3})
        assert over.status_code == 429 and over.json()["field"] == "tasks"
        assert "6" in over.json()["message"] and over.headers["retry-after"]
        frank.delete(f"/api/tasks/{first.json()['tasks'][0]['id']}")  # finished tasks free the quota
        assert frank.post("/api/tasks", json={**job("x"), "count": 3}).status_code == 201
    with _user(coord, "grace") as grace:  # the quota is per key
        assert grace.post("/api/tasks", json={**job("x"), "count": 6}).status_code == 201
