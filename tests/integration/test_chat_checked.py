"""Checked chat in an open pool: a trusted node re-scores untrusted nodes' answers after the response.

Every node runs the real transformers engine on a tiny Llama model made locally. The
liar serves a model with the same tokenizer and architecture but other weights, under
the same name — what a node claiming a big model and serving a small one looks like.
Others lie about their answers' shape (truncated, padded) through the node's fault hook.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.node.engines.tinymodel import make_tiny_model
from phage.testing import CoordinatorProcess, NodeProcess, free_port, stop_all, wait_online, wait_until

# checks between nodes; quarantine in the store is tested on both backends elsewhere
pytestmark = pytest.mark.backend_neutral

MODEL = "tiny-llama"
OPEN_POOL = {"PHAGE_ADMISSION": "open", "PHAGE_CHAT_UNTRUSTED_NODES": "1", "PHAGE_CHAT_CHECK_UNTRUSTED": "1"}


class CheckedPool:
    """An open pool: one node made trusted (the checker), the others untrusted."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[CoordinatorProcess | NodeProcess] = []
        self.coord: CoordinatorProcess | None = None
        self.ids: dict[str, str] = {}

    def start(
        self, checker_model: Path, others: dict[str, tuple[Path, dict[str, str]]]
    ) -> CoordinatorProcess:
        coord = CoordinatorProcess(self.tmp_path / "coordinator", heartbeat_s=0.5, env=OPEN_POOL).start()
        self.coord = coord
        self.started.append(coord)
        for name, (model, env) in {"checker": (checker_model, {}), **others}.items():
            node = NodeProcess(
                coord,
                self.tmp_path / name,
                name=name,
                concurrency=4,
                engine="transformers",
                model=str(model),
                env=env,
            )
            self.started.append(node.start())
        nodes = wait_online(coord, 1 + len(others), timeout=120)
        self.ids = {n["name"]: n["id"] for n in nodes}
        with coord.client() as c:
            assert all(not n["trusted"] for n in nodes), "open admission: nobody is trusted"
            made = c.post(f"/api/nodes/{self.ids['checker']}", json={"trusted": True})
            assert made.status_code == 200, made.text

        def served() -> bool:
            with coord.client() as c:
                return [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]

        wait_until(served, 60, what="the model listed")
        return coord

    def node(self, name: str) -> dict[str, Any]:
        assert self.coord is not None
        with self.coord.client() as c:
            nodes = c.get("/api/nodes").json()["nodes"]
        return dict(next(n for n in nodes if n["id"] == self.ids[name]))

    def stop(self) -> None:
        stop_all(self.started)


@pytest.fixture
def checked(tmp_path: Path) -> Iterator[CheckedPool]:
    made = CheckedPool(tmp_path)
    yield made
    made.stop()


def _chat(coord: CoordinatorProcess, i: int, temperature: float, seed: int | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"question number {i}: say something"}],
        "max_tokens": 6,
        "temperature": temperature,
    }
    if seed is not None:
        body["seed"] = seed
    return httpx.post(
        f"{coord.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {coord.admin_key}", "X-Phage-Extensions": "1"},
        timeout=60,
    )


def _verdict(coord: CoordinatorProcess, request_id: str) -> str:
    def settled() -> str:
        with coord.client() as c:
            row = c.get(f"/api/usage/requests/{request_id}").json()
        return "" if row.get("checked") in (None, "pending") else str(row["checked"])

    return wait_until(settled, 60, what=f"the check of {request_id}")


def _caught_within(checked: CheckedPool, liar: str, chats: int) -> list[str]:
    """Chat until ``liar`` served ``chats`` answers or was quarantined; its answers' verdicts."""
    assert checked.coord is not None
    verdicts: list[str] = []
    for i in range(200):
        if checked.node(liar)["quarantined"]:
            break
        r = _chat(checked.coord, i, temperature=0)
        if r.status_code != 200:
            continue  # the liar was quarantined between the check and this chat
        ext = r.json()["phage"]
        if ext["node_id"] != checked.ids[liar]:
            continue
        assert ext["check"] == "pending" and r.headers["x-phage-request"] == ext["request_id"]
        verdicts.append(_verdict(checked.coord, ext["request_id"]))
        if len(verdicts) >= chats:
            break
    return verdicts


def test_a_node_serving_another_model_is_quarantined_within_three_chats(
    checked: CheckedPool, tiny_model: Path, tmp_path: Path
) -> None:
    impostor = make_tiny_model(tmp_path / "other-weights", seed=1, name=MODEL)
    checked.start(tiny_model, {"impostor": (impostor, {})})
    verdicts = _caught_within(checked, "impostor", 3)
    assert "fail" in verdicts, verdicts
    node = checked.node("impostor")
    assert node["quarantined"] and "not the model's first choice" in node["quarantine_reason"], node
    assert not checked.node("checker")["quarantined"]
    assert checked.coord is not None
    with checked.coord.client() as c:
        metrics = c.get("/metrics").text
    assert 'phage_chat_checks_total{verdict="fail"} 1.0' in metrics, metrics


@pytest.mark.parametrize("fault", ["truncate", "pad"])
def test_a_node_that_truncates_or_pads_answers_is_caught(
    checked: CheckedPool, tiny_model: Path, fault: str
) -> None:
    checked.start(tiny_model, {"liar": (tiny_model, {"PHAGE_TEST_CHAT_FAULT": fault})})
    verdicts = _caught_within(checked, "liar", 3)
    assert verdicts and verdicts[0] == "fail", verdicts
    reason = checked.node("liar")["quarantine_reason"]
    assert "checked chat" in reason and ("text" in reason or "truncated" in reason), reason


HONEST_CHATS = 200
"""Checked answers the untrusted honest node must serve (half greedy, half sampled with seeds)."""


def test_honest_nodes_are_never_flagged_greedy_or_sampled(checked: CheckedPool, tiny_model: Path) -> None:
    """200 answers from the untrusted honest node, every one checked, none flagged.

    The trusted checker serves chats too (the least busy node gets each), so clients keep
    asking, 8 at a time, until the untrusted node alone has served 200; the checker's own
    answers are not checked (it is trusted).
    """
    coord = checked.start(tiny_model, {"honest": (tiny_model, {})})
    honest_id = checked.ids["honest"]
    from_honest: dict[str, bool] = {}  # request id -> greedy, for the untrusted node's answers
    failures: list[str] = []  # a thread's assertion would only print: collect, assert after
    asked = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal asked
        while True:
            with lock:
                if len(from_honest) >= HONEST_CHATS or asked >= 4 * HONEST_CHATS:
                    return
                i, asked = asked, asked + 1
            greedy = i % 2 == 0
            r = _chat(coord, i, temperature=0 if greedy else 0.8, seed=None if greedy else i)
            ext = r.json().get("phage", {}) if r.status_code == 200 else {}
            with lock:
                if not ext or (ext["node_id"] == honest_id and ext["check"] != "pending"):
                    failures.append(r.text)
                    return
                if ext["node_id"] == honest_id:
                    from_honest[ext["request_id"]] = greedy

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert len(from_honest) >= HONEST_CHATS, (len(from_honest), asked)
    greedy_answers = sum(from_honest.values())
    assert min(greedy_answers, len(from_honest) - greedy_answers) >= HONEST_CHATS // 4, "both kinds, many"
    with coord.client() as c:

        def all_checked() -> list[dict[str, Any]]:
            rows = c.get("/api/usage/requests", params={"limit": 1000}).json()["requests"]
            untrusted = [r for r in rows if r["node_id"] == honest_id]
            done = [r for r in untrusted if r["checked"] in ("pass", "fail")]
            return rows if len(done) == len(untrusted) >= HONEST_CHATS else []

        rows = wait_until(all_checked, 120, what="every untrusted answer checked")
    checked_rows = [r for r in rows if r["node_id"] == honest_id]
    assert {r["id"] for r in checked_rows} >= set(from_honest)
    assert all(r["checked"] == "pass" for r in checked_rows), [
        r for r in checked_rows if r["checked"] != "pass"
    ]
    assert all(r["checked"] is None for r in rows if r["node_id"] == checked.ids["checker"])
    assert not checked.node("honest")["quarantined"]


def test_an_open_pool_that_did_not_opt_in_never_sends_a_prompt_to_an_untrusted_node(
    checked: CheckedPool,
) -> None:
    """Open admission without ``chat_untrusted_nodes``: untrusted nodes never see a prompt.

    While only untrusted nodes serve the model, a chat gets a 503 that says why (not a
    404 that suggests a typo); once a trusted node serves it, every chat goes there.
    Nodes run the stand-in OpenAI-compatible server (fast, counts what it served).
    """
    coord = CoordinatorProcess(
        checked.tmp_path / "coordinator", heartbeat_s=0.5, env={"PHAGE_ADMISSION": "open"}
    ).start()
    checked.started.append(coord)
    model, ports = "standin-7b", {"keeper": free_port(), "stranger": free_port()}
    for name, port in ports.items():
        node = NodeProcess(
            coord,
            checked.tmp_path / name,
            name=name,
            concurrency=4,
            engine="vllm",
            model=model,
            args=(
                "--engine-command",
                f"{sys.executable} -m phage.node.engines.standin",
                "--engine-port",
                str(port),
            ),
        )
        checked.started.append(node.start())
    ids = {n["name"]: n["id"] for n in wait_online(coord, 2, timeout=90)}
    url = f"{coord.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {coord.admin_key}", "X-Phage-Extensions": "1"}
    body = {"model": model, "messages": [{"role": "user", "content": "a private prompt"}], "max_tokens": 4}
    refusal: dict[str, Any] = {}

    def refused_with_reason() -> bool:
        r = httpx.post(url, json=body, headers=auth, timeout=30)
        assert r.status_code in (404, 503), ("an untrusted node served a chat", r.text)
        refusal.update(r.json()["error"])
        return r.status_code == 503  # 404 only until the nodes' chat streams are open

    wait_until(refused_with_reason, 60, what="the chat refused because only untrusted nodes serve it")
    assert refusal["param"] == "model" and "untrusted" in refusal["message"], refusal
    with coord.client() as c:
        assert c.get("/v1/models").json()["data"] == [], "a model only strangers serve is not offered"
        assert c.post(f"/api/nodes/{ids['keeper']}", json={"trusted": True}).status_code == 200

    def listed() -> bool:
        with coord.client() as c:
            return [m["id"] for m in c.get("/v1/models").json()["data"]] == [model]

    wait_until(listed, 30, what="the model offered once a trusted node serves it")
    served_by: list[str] = []
    lock = threading.Lock()

    def ask() -> None:
        for _ in range(6):
            r = httpx.post(url, json=body, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            with lock:
                served_by.append(r.json()["phage"]["node_id"])

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert served_by == [ids["keeper"]] * 24, "busy or not, the trusted node served every chat"
    stranger = httpx.get(f"http://127.0.0.1:{ports['stranger']}/stats", timeout=10).json()
    assert stranger["requests"] == 0, ("the untrusted node's engine saw a prompt", stranger)
    with coord.client() as c:
        earned = {a["node_id"] for a in c.get("/api/usage/nodes").json()["nodes"]}
    assert earned == {ids["keeper"]}
