"""Metering that counts everything: streams cut short, concurrent spending, lying nodes, rate limits.

Nodes run the ``vllm`` engine manager on the stand-in OpenAI-compatible server (one
token per word, at a known pace), so the tests know exactly what was delivered.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, free_port, stop_all, wait_online, wait_until

# Whether concurrent requests can overspend depends on the store's atomic holds: that test runs on
# both backends; the rest is decided at the HTTP edge and in the meter, and runs once.
NEUTRAL = pytest.mark.backend_neutral

MODEL = "standin-7b"
STANDIN = f"{sys.executable} -m phage.node.engines.standin"


class Pool:
    """A coordinator and stand-in nodes, stopped at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[CoordinatorProcess | NodeProcess] = []
        self.ports: list[int] = []

    def start(
        self, nodes: int = 1, env: dict[str, str] | None = None, node_env: dict[str, str] | None = None
    ) -> CoordinatorProcess:
        coord = CoordinatorProcess(self.tmp_path / "coordinator", heartbeat_s=0.5, env=env or {}).start()
        self.started.append(coord)
        for i in range(nodes):
            port = free_port()
            node = NodeProcess(
                coord,
                self.tmp_path / f"node-{i}",
                name=f"gpu-{i}",
                concurrency=8,
                engine="vllm",
                model=MODEL,
                args=("--engine-command", STANDIN, "--engine-port", str(port)),
                env=node_env or {},
            ).start()
            self.started.append(node)
            self.ports.append(port)
        wait_online(coord, nodes, timeout=90)

        def listed() -> bool:
            with coord.client() as c:
                return MODEL in [m["id"] for m in c.get("/v1/models").json().get("data", [])]

        wait_until(listed, 60, what="model listed")
        return coord

    def stop(self) -> None:
        stop_all(self.started)


@pytest.fixture
def pool(tmp_path: Path) -> Any:
    made = Pool(tmp_path)
    yield made
    made.stop()


def _body(max_tokens: int, stream: bool, text: str = "tell me a long story") -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def _new_key(coord: CoordinatorProcess, name: str, limit: int | None = None) -> tuple[str, str]:
    with coord.client() as c:
        made = c.post("/api/keys", json={"name": name, "credit_limit_tokens": limit})
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["key"]


def _log(coord: CoordinatorProcess, key_id: str, want: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def logged() -> bool:
        nonlocal rows
        with coord.client() as c:
            rows = c.get("/api/usage/requests", params={"key_id": key_id}).json()["requests"]
        return len(rows) >= want

    wait_until(logged, 30, what=f"{want} requests in the usage log")
    return rows


def _stats(port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json())


@NEUTRAL
def test_a_stream_cut_short_is_charged_for_what_it_delivered(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHAGE_STANDIN_TOKEN_DELAY_MS", "30")
    coord = pool.start()
    key_id, secret = _new_key(coord, "reader")
    got = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{coord.url}/v1/chat/completions",
            json=_body(2000, True),
            headers={"Authorization": f"Bearer {secret}"},
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                got += 1
            if got >= 5:
                break  # hang up after five tokens
    (row,) = _log(coord, key_id, 1)
    assert row["outcome"] == "client_closed" and row["kind"] == "chat"
    assert abs(row["completion_tokens"] - 5) <= 1, row
    assert row["reported_completion_tokens"] == 0, "the node never finished, so never reported"
    assert row["prompt_tokens"] > 0 and row["node_id"]
    with coord.client() as c:
        (mine,) = c.get("/api/usage", params={"key_id": key_id}).json()["keys"]
        assert mine["completion_tokens"] == row["completion_tokens"]
        nodes = c.get("/api/usage/nodes").json()["nodes"]
        assert nodes[0]["node_id"] == row["node_id"] and nodes[0]["completion_tokens"] >= 5
        recent = c.get("/usage/recent", params={"limit": 5}).json()
        assert recent[0]["user_id"] == key_id and recent[0]["worker_ids"] == [row["node_id"]]
        metrics = c.get("/metrics").text
    node = row["node_id"][:16]
    assert (
        f'phage_chat_errors_total{{kind="chat",model="{MODEL}",node="{node}",outcome="client_closed"}} 1.0'
        in metrics
    ), metrics
    assert f'phage_chat_time_to_first_token_seconds_count{{model="{MODEL}",node="{node}"}} 1.0' in metrics
    completion = f'phage_chat_tokens_total{{kind="chat",model="{MODEL}",node="{node}",type="completion"}}'
    assert completion in metrics


def test_concurrent_requests_cannot_overspend_a_limit(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds of 8 concurrent requests against a 50-token limit spend at most ``max_tokens`` past it.

    The limit counts prompt and completion tokens. A request holds the most it can cost
    (its prompt's bound plus ``max_tokens``) while it runs, so concurrent requests are
    refused until it settles, and it is admitted only while the credit left covers its
    prompt's estimate (about 4 bytes a token, plus 4 a message: 9 for this prompt). So one
    request at most crosses the limit, and the spend is at most
    ``limit - estimate + prompt + max_tokens``; the stand-in counts this prompt as 5 tokens
    (one a word), under its estimate, so here the bound is exactly ``limit + max_tokens``.
    A prompt counted above its estimate would add the difference: the coordinator cannot
    count a prompt before a node does.
    """
    monkeypatch.setenv("PHAGE_STANDIN_TOKEN_DELAY_MS", "5")
    coord = pool.start()
    limit, max_tokens = 50, 30
    key_id, secret = _new_key(coord, "spender", limit=limit)
    statuses: list[int] = []
    usages: list[dict[str, int]] = []
    gate = threading.Barrier(8)

    def ask() -> None:
        gate.wait()
        r = httpx.post(
            f"{coord.url}/v1/chat/completions",
            json=_body(max_tokens, False),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )
        statuses.append(r.status_code)
        if r.status_code == 200:
            usages.append(r.json()["usage"])
        else:
            assert r.status_code == 402 and "tokens" in r.json()["error"]["message"], r.text

    for _ in range(6):  # rounds until the key is spent: each round, at most one request is served
        before = len(statuses)
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served_now = statuses[before:].count(200)
        assert served_now <= 1, ("concurrent requests were admitted together", statuses[before:])
        if not served_now:
            break
    assert statuses[-8:] == [402] * 8, ("the key was never spent", statuses)
    served = statuses.count(200)
    assert served >= 2, ("no request crossed the limit: the test proves nothing", usages)
    rows = _log(coord, key_id, served)
    with coord.client() as c:
        (mine,) = c.get("/api/usage", params={"key_id": key_id}).json()["keys"]
    assert all(u["prompt_tokens"] == 5 and u["completion_tokens"] <= max_tokens for u in usages), usages
    assert mine["total_tokens"] == sum(u["total_tokens"] for u in usages)
    # Only the last request crossed the limit; the ones before it ended inside it.
    ordered = sorted(rows, key=lambda r: r["started_at"])
    assert sum(r["total_tokens"] for r in ordered[:-1]) < limit, ordered
    assert limit < mine["total_tokens"] <= limit + max_tokens, (mine, usages)
    assert mine["credit_left_tokens"] == 0
    # a top-up opens the key again
    with coord.client() as c:
        up = c.post(f"/api/keys/{key_id}/topup", json={"tokens": 1000})
        assert up.status_code == 200 and up.json()["credit_left_tokens"] > 0, up.text
        bad = c.post(f"/api/keys/{key_id}/topup", json={"tokens": -3})
        assert bad.status_code == 400 and bad.json()["field"] == "tokens"
    again = httpx.post(
        f"{coord.url}/v1/chat/completions",
        json=_body(4, False),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert again.status_code == 200, again.text


@NEUTRAL
def test_a_node_reporting_billions_of_tokens_bills_what_it_delivered(pool: Pool) -> None:
    coord = pool.start(node_env={"PHAGE_TEST_CHAT_FAULT": "inflate_usage"})
    key_id, secret = _new_key(coord, "victim", limit=10_000)
    r = httpx.post(
        f"{coord.url}/v1/chat/completions",
        json=_body(7, False, text="hi"),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    words = r.json()["choices"][0]["message"]["content"].split()
    assert len(words) == 7
    assert usage["completion_tokens"] <= 7 and usage["prompt_tokens"] < 200, usage
    (row,) = _log(coord, key_id, 1)
    assert row["reported_completion_tokens"] == 4_000_000_000
    assert row["completion_tokens"] == usage["completion_tokens"]
    with coord.client() as c:
        (mine,) = c.get("/api/usage", params={"key_id": key_id}).json()["keys"]
        assert mine["total_tokens"] == usage["total_tokens"] and mine["credit_left_tokens"] > 9_000


@NEUTRAL
def test_rate_limits_answer_429_with_retry_after_and_reset(pool: Pool) -> None:
    coord = pool.start(env={"PHAGE_CHAT_REQUESTS_PER_MINUTE": "3", "PHAGE_CHAT_RATE_WINDOW_S": "3"})
    key_id, secret = _new_key(coord, "hasty")
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{coord.url}/v1/chat/completions"
    for _ in range(3):
        assert httpx.post(url, json=_body(2, False), headers=headers, timeout=30).status_code == 200
    refused = httpx.post(url, json=_body(2, False), headers=headers, timeout=30)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 3
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    # another key is not affected
    with coord.client() as c:
        assert c.post("/v1/chat/completions", json=_body(2, False)).status_code == 200
    # a key's own limit overrides the default; and the window slides: the key is served again
    with coord.client() as c:
        set_rates = c.post(f"/api/keys/{key_id}", json={"requests_per_minute": 5})
        assert set_rates.status_code == 200, set_rates.text
        bad = c.post(f"/api/keys/{key_id}", json={"requests_per_minute": 0})
        assert bad.status_code == 400 and bad.json()["field"] == "requests_per_minute"

    def served() -> bool:
        return httpx.post(url, json=_body(2, False), headers=headers, timeout=30).status_code == 200

    wait_until(served, 10, what="the rate window to slide")


@NEUTRAL
def test_concurrency_limit_and_a_client_that_stops_reading(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHAGE_STANDIN_TOKEN_DELAY_MS", "1")
    monkeypatch.setenv("PHAGE_STANDIN_TOKEN_PAD", "4000")  # a stream far larger than socket buffers
    coord = pool.start(env={"PHAGE_CHAT_MAX_CONCURRENT": "1", "PHAGE_CHAT_CLIENT_STALL_S": "2"})
    key_id, secret = _new_key(coord, "sleepy")
    port = pool.ports[0]
    body = httpx.Request(
        "POST",
        f"{coord.url}/v1/chat/completions",
        json=_body(32_000, True),
        headers={"Authorization": f"Bearer {secret}"},
    )
    # A raw client with a tiny receive buffer that sends its request and then never reads.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", coord.http_port))
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in body.headers.items() if k.lower() != "host"
    )
    sock.sendall(head.encode() + b"\r\n" + body.read())
    try:
        # while it holds its one slot, the key's next chat is refused…
        def busy() -> bool:
            r = httpx.post(
                f"{coord.url}/v1/chat/completions",
                json=_body(2, False),
                headers={"Authorization": f"Bearer {secret}"},
                timeout=30,
            )
            return r.status_code == 429 and r.headers.get("retry-after") == "1"

        wait_until(busy, 10, what="the second concurrent chat refused")
        # …until the coordinator gives up on the stalled reader: the generation stops on the node
        wait_until(lambda: _stats(port)["cancelled"] == 1, 30, what="the stalled stream cancelled")
        rows = _log(coord, key_id, 1)
        assert rows[0]["outcome"] == "client_stalled" and rows[0]["completion_tokens"] > 0
    finally:
        sock.close()
    ok = httpx.post(
        f"{coord.url}/v1/chat/completions",
        json=_body(2, False),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text


@NEUTRAL
def test_model_aliases_fall_back_in_order(pool: Pool) -> None:
    aliases = '{"gpt-4o": ["qwen-72b-nowhere", "standin-7b"], "ghost": ["qwen-72b-nowhere"]}'
    coord = pool.start(env={"PHAGE_CHAT_ALIASES": aliases})
    with coord.client() as c:
        listed = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert listed == [MODEL, "gpt-4o"], "an alias is listed while one of its models is served"
        r = c.post("/v1/chat/completions", json={**_body(3, False), "model": "gpt-4o"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL and r.json()["usage"]["completion_tokens"] == 3
        gone = c.post("/v1/chat/completions", json={**_body(3, False), "model": "ghost"})
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "model"


@NEUTRAL
def test_tool_calls_pass_through_to_an_engine_that_supports_them(pool: Pool) -> None:
    import openai

    coord = pool.start()
    client = openai.OpenAI(base_url=f"{coord.url}/v1", api_key=coord.admin_key, max_retries=0)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    messages = [{"role": "user", "content": "weather in Lyon?"}]
    done = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=20)  # type: ignore[arg-type]
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls", done
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "query": "weather in Lyon?"
    }
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=tools,
        max_tokens=20,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert streamed and streamed[0].function is not None and streamed[0].function.name == "get_weather"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
