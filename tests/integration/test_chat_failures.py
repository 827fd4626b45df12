"""Chat when things go wrong: the client hangs up, the node dies mid-stream or mid-request.

Nodes run the ``vllm`` engine manager on the stand-in OpenAI-compatible server
(a real process launched as ``vllm serve`` would be), slowed to a known pace per
token so a stream is still running when the test acts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, free_port, stop_all, wait_online, wait_until
from tests.integration.conftest import job

pytestmark = pytest.mark.backend_neutral  # a node dying mid-stream: the chat router, in memory

Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]
MODEL = "standin-7b"
STANDIN = f"{sys.executable} -m phage.node.engines.standin"


def _start(
    tmp_path: Path, count: int, delay_ms: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[CoordinatorProcess, list[tuple[NodeProcess, int]]]:
    monkeypatch.setenv("PHAGE_STANDIN_TOKEN_DELAY_MS", str(delay_ms))
    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=0.5).start()
    nodes = []
    for i in range(count):
        port = free_port()
        node = NodeProcess(
            coord,
            tmp_path / f"node-{i}",
            name=f"gpu-{i}",
            concurrency=2,
            engine="vllm",
            model=MODEL,
            args=("--engine-command", STANDIN, "--engine-port", str(port)),
        ).start()
        nodes.append((node, port))
    wait_online(coord, count, timeout=90)

    def listed() -> bool:
        with coord.client() as c:
            data = c.get("/v1/models").json().get("data", [])
            return [m["id"] for m in data] == [MODEL]

    wait_until(listed, 60, what="model listed")
    # every node's order stream is open once it answers a chat
    return coord, nodes


def _stats(port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json())


def _body(max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


@pytest.fixture
def stopper() -> Any:
    started: list[Any] = []
    yield started
    stop_all(started)


def test_client_disconnect_stops_generation_on_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopper: list[Any]
) -> None:
    coord, nodes = _start(tmp_path, 1, delay_ms=20, monkeypatch=monkeypatch)
    stopper.extend([coord, *(n for n, _ in nodes)])
    port = nodes[0][1]
    headers = {"Authorization": f"Bearer {coord.admin_key}"}
    got = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{coord.url}/v1/chat/completions", json=_body(2000, True), headers=headers
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += 1
            if got >= 5:
                break  # hang up after a few tokens
    assert got >= 5
    wait_until(lambda: _stats(port)["cancelled"] == 1, 15, what="the engine saw the stream cancelled")
    tokens = _stats(port)["tokens"]
    time.sleep(0.5)
    after = _stats(port)
    assert after["tokens"] == tokens, "generation stopped: no more tokens after the cancel"
    assert tokens < 400, f"stopped early ({tokens} of 2000 tokens; 20 ms each)"
    assert after["finished"] == 0
    # the node serves the next one (the unfinished chat was charged for what it delivered)
    with coord.client() as c:
        ok = c.post("/v1/chat/completions", json=_body(3, False))
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_node_killed_mid_stream_ends_with_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopper: list[Any]
) -> None:
    coord, nodes = _start(tmp_path, 1, delay_ms=20, monkeypatch=monkeypatch)
    stopper.extend([coord, *(n for n, _ in nodes)])
    headers = {"Authorization": f"Bearer {coord.admin_key}"}
    events: list[str] = []
    started = time.monotonic()
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST", f"{coord.url}/v1/chat/completions", json=_body(2000, True), headers=headers
        ) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 5:
                nodes[0][0].kill()
                killed = time.monotonic()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert "error" in error and "lost the chat stream" in error["error"]["message"], error
    assert time.monotonic() - killed < 1.0, "the broken gRPC stream ends the client's stream at once"
    assert all("choices" in json.loads(e) for e in events[:4])
    assert time.monotonic() - started < 30


def test_non_streaming_request_is_retried_on_another_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopper: list[Any]
) -> None:
    coord, nodes = _start(tmp_path, 2, delay_ms=25, monkeypatch=monkeypatch)
    stopper.extend([coord, *(n for n, _ in nodes)])
    result: dict[str, Any] = {}

    def ask() -> None:
        with coord.client() as c:
            r = c.post("/v1/chat/completions", json=_body(120, False), timeout=60)
            result["status"] = r.status_code
            result["body"] = r.json()
            result["node"] = r.headers.get("x-phage-node")

    t = threading.Thread(target=ask)
    t.start()
    wait_until(lambda: any(_stats(p)["started"] for _, p in nodes), 15, what="a node started the request")
    victim = next(i for i, (_, p) in enumerate(nodes) if _stats(p)["started"])
    survivor = 1 - victim
    time.sleep(0.3)  # mid-generation (120 tokens × 25 ms)
    nodes[victim][0].kill()
    t.join(60)
    assert result.get("status") == 200, result
    assert result["body"]["usage"]["completion_tokens"] == 120
    assert result["node"] == nodes[survivor][0].node_id
    assert _stats(nodes[survivor][1])["finished"] == 1


def test_chat_does_not_wait_behind_queued_batch_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopper: list[Any]
) -> None:
    coord, nodes = _start(tmp_path, 1, delay_ms=1, monkeypatch=monkeypatch)
    stopper.extend([coord, *(n for n, _ in nodes)])
    with coord.client() as c:
        # every slot busy with 20-second jobs, and more queued behind them
        made = c.post("/api/tasks", json={"tasks": [job(f"v{i}", sleep=20) for i in range(8)]})
        assert made.status_code == 201, made.text
        wait_until(lambda: c.get("/api/status").json()["slots"]["busy"] >= 2, 30, what="node slots full")
        assert c.get("/api/status").json()["queue"]["depth"] >= 6
        started = time.monotonic()
        r = c.post("/v1/chat/completions", json=_body(16, False))
        took = time.monotonic() - started
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    assert took < 5, f"chat answered in {took:.2f} s while batch work queued"
