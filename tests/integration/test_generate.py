"""Generate tasks end to end: a real tiny model on node processes, verifiers, best-of-N."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final

# Metering holds credit in the store and runs on both backends; picking among attempts and
# refusing unknown models happens in the coordinator's memory, so those run once.
NEUTRAL = pytest.mark.backend_neutral

Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]


def _generate(**extra: object) -> dict[str, object]:
    return {
        "kind": "generate",
        "prompt": "def add(a, b):",
        "model": "tiny-llama",
        "verifier": "test -s output.txt && test -f spec.txt",
        "files": {"spec.txt": "the output must not be empty\n"},
        "max_tokens": 24,
        "temperature": 1.0,
        **extra,
    }


@NEUTRAL
def test_best_of_n_keeps_the_passing_attempt_with_fewest_tokens(pool: Pool, tiny_model: Path) -> None:
    coord, _nodes = pool(nodes=3, concurrency=1, engine="transformers", model=str(tiny_model))
    wait_online(coord, 3, timeout=90)
    with coord.client() as c:
        resp = c.post("/api/tasks", json=_generate(n=3))
        assert resp.status_code == 201, resp.text
        (task,) = wait_tasks_final(coord, [resp.json()["id"]], timeout=120)
        assert task["state"] == "verified", task
        attempts = task["attempts"]
        assert len(attempts) == 3
        assert len({a["node_id"] for a in attempts}) == 3, "best-of-3 goes to three distinct nodes"
        assert all(a["state"] == "succeeded" and a["passed"] and a["attested"] for a in attempts)
        best = min(attempts, key=lambda a: (a["completion_tokens"], a["finished_at"], a["id"]))
        result = task["result"]
        assert result["attempt_id"] == best["id"]
        assert result["completion_tokens"] == best["completion_tokens"]
        assert (
            result["passed"] is True
            and result["engine"] == "transformers"
            and result["model"] == "tiny-llama"
        )
        # the output is downloadable and is what the model wrote
        body = c.get(f"/api/tasks/{task['id']}/outputs/output.txt")
        assert body.status_code == 200 and body.text == result["output_text"]


@NEUTRAL
def test_generate_fails_with_reasons_when_no_attempt_passes(pool: Pool, tiny_model: Path) -> None:
    coord, _ = pool(nodes=2, concurrency=1, engine="transformers", model=str(tiny_model))
    wait_online(coord, 2, timeout=90)
    with coord.client() as c:
        resp = c.post("/api/tasks", json=_generate(n=2, verifier="echo checking; exit 3"))
        (task,) = wait_tasks_final(coord, [resp.json()["id"]], timeout=120)
        assert task["state"] == "failed"
        assert "no attempt passed" in task["error"] and "exit code 3" in task["error"]
        assert [a["passed"] for a in task["attempts"]] == [False, False]
        assert all("checking" in a["verifier_log"] for a in task["attempts"])


@NEUTRAL
def test_unknown_model_is_refused_at_submit_unless_asked_to_wait(pool: Pool, tiny_model: Path) -> None:
    coord, _ = pool(nodes=1, engine="transformers", model=str(tiny_model))
    wait_online(coord, 1, timeout=90)
    with coord.client() as c:
        resp = c.post("/api/tasks", json=_generate(model="no-such-model"))
        assert resp.status_code == 400
        assert resp.json()["field"] == "model" and "tiny-llama" in resp.json()["message"]
        waiting = c.post("/api/tasks", json=_generate(model="no-such-model", wait_for_model=True))
        assert waiting.status_code == 201
        assert c.get(f"/api/tasks/{waiting.json()['id']}").json()["state"] == "queued"


def test_generate_tasks_are_metered_and_refused_when_the_credit_is_spent(
    pool: Pool, tiny_model: Path
) -> None:
    coord, _ = pool(nodes=1, concurrency=1, engine="transformers", model=str(tiny_model))
    wait_online(coord, 1, timeout=90)
    with coord.client() as c:
        # the prompt is estimated at 7 tokens; a task's worst case (its prompt's bound + max_tokens) is held
        made = c.post("/api/keys", json={"name": "batch", "credit_limit_tokens": 8}).json()
    user = httpx.Client(base_url=coord.url, headers={"Authorization": f"Bearer {made['key']}"}, timeout=60)
    with user:
        batch = user.post("/api/tasks", json=_generate(max_tokens=8, count=2))
        assert batch.status_code == 402, batch.text  # the first task's hold leaves too little for the second
        assert "generate tasks in flight" in batch.json()["message"]
        assert user.get("/api/tasks").json()["tasks"] == [], "a refused batch creates nothing"
        first = user.post("/api/tasks", json=_generate(max_tokens=8))
        assert first.status_code == 201, first.text
        (task,) = wait_tasks_final(coord, [first.json()["id"]], timeout=120)
        (attempt,) = task["attempts"]
        log = user.get("/api/usage/requests").json()["requests"]
        assert [r["kind"] for r in log] == ["generate"]
        assert log[0]["model"] == "tiny-llama" and log[0]["node_id"] == attempt["node_id"]
        assert 0 < log[0]["completion_tokens"] <= 8 and log[0]["prompt_tokens"] > 0
        (mine,) = user.get("/api/usage").json()["keys"]
        assert mine["total_tokens"] == log[0]["total_tokens"] and mine["credit_left_tokens"] == 0
        spent = user.post("/api/tasks", json=_generate())
        assert spent.status_code == 402, spent.text
        assert spent.json()["error"] == "PaymentRequired" and "tokens" in spent.json()["message"]
