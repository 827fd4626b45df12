"""OpenAI-compatible chat end to end: the official ``openai`` client and ``curl -N`` against phage,
a node running the real transformers engine on a tiny model made locally."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

# chats are routed in memory; their metering in the store runs on both backends in test_chat_metering
pytestmark = pytest.mark.backend_neutral

Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]


def _chat_ready(coord: CoordinatorProcess, model: str) -> None:
    def served() -> bool:
        with coord.client() as c:
            r = c.get("/v1/models")
            return r.status_code == 200 and model in [m["id"] for m in r.json()["data"]]

    wait_until(served, 60, what=f"{model} listed in /v1/models")


@pytest.fixture
def chat_pool(pool: Pool, tiny_model: Path) -> CoordinatorProcess:
    coord, _ = pool(nodes=1, concurrency=1, engine="transformers", model=str(tiny_model))
    wait_online(coord, 1, timeout=90)
    _chat_ready(coord, "tiny-llama")
    return coord


def test_openai_client_streams_and_completes(chat_pool: CoordinatorProcess) -> None:
    client = openai.OpenAI(base_url=f"{chat_pool.url}/v1", api_key=chat_pool.admin_key, max_retries=0)
    models = [m.id for m in client.models.list()]
    assert models == ["tiny-llama"]

    done = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"}],
        max_tokens=12,
        temperature=0,
    )
    assert done.object == "chat.completion" and done.model == "tiny-llama"
    choice = done.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.prompt_tokens > 0
    assert 0 < done.usage.completion_tokens <= 12
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "count"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert 0 < usage.completion_tokens <= 16 and usage.prompt_tokens > 0
    # Greedy decoding: the streamed text is the same completion as a non-streamed call.
    again = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "count"}], max_tokens=16, temperature=0
    )
    assert again.choices[0].message.content == text

    # Usage was metered per key, model and node.
    with chat_pool.client() as c:
        resp = c.get("/api/usage")
        assert resp.status_code == 200, resp.text
        body = resp.json()
    admin = next(k for k in body["keys"] if k["name"] == "admin")
    assert admin["requests"] == 3
    assert admin["completion_tokens"] == done.usage.completion_tokens + usage.completion_tokens + (
        again.usage.completion_tokens if again.usage else 0
    )
    assert set(admin["by_model"]) == {"tiny-llama"} and len(admin["by_node"]) == 1


def test_curl_streams_server_sent_events(chat_pool: CoordinatorProcess) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is required (installed by scripts/setup.sh)"
    body = json.dumps(
        {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "stream": True,
        }
    )
    out = subprocess.run(
        [
            curl,
            "-sS",
            "-N",
            f"{chat_pool.url}/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {chat_pool.admin_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line[len("data: ") :] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["usage"]["completion_tokens"] > 0

    plain = subprocess.run(
        [
            curl,
            "-sS",
            f"{chat_pool.url}/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {chat_pool.admin_key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body.replace('"stream": true', '"stream": false'),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    answer = json.loads(plain)
    assert answer["object"] == "chat.completion" and answer["usage"]["total_tokens"] > 0


def test_chat_errors_are_openai_shaped(chat_pool: CoordinatorProcess) -> None:
    url = f"{chat_pool.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {chat_pool.admin_key}"}
    cases = [
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "tiny-llama", "messages": []}, 400, "messages"),
        ({"model": "tiny-llama", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        (
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        (
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            400,
            "temperature",
        ),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "n": 9}, 400, "n"),
        (
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "n": 2, "stream": True},
            400,
            "n",
        ),
        (
            {
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            },
            400,
            "tools",
        ),
        (
            {
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            400,
            "response_format",
        ),
        (
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
            400,
            "logprobs",
        ),
        ({"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "bogus": 1}, 400, "bogus"),
        (
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5},
            400,
            "stop",
        ),
    ]
    for body, status, param in cases:
        r = httpx.post(url, json=body, headers=auth, timeout=30)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"], r.text
    r = httpx.post(url, content=b"{not json", headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(
        url, json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}]}, timeout=30
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"

    # The openai client surfaces them as its own exceptions.
    client = openai.OpenAI(base_url=f"{chat_pool.url}/v1", api_key=chat_pool.admin_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    # Tools sent to an engine that cannot call them: the client raises BadRequestError naming ``tools``,
    # rather than getting a plain answer that silently ignored them.
    with pytest.raises(openai.BadRequestError) as no_tools:
        client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "weather in Lyon?"}],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        )
    assert no_tools.value.status_code == 400 and "tools" in no_tools.value.message
    assert isinstance(no_tools.value.body, dict) and no_tools.value.body.get("param") == "tools"


def test_keys_credit_limits_and_revocation(chat_pool: CoordinatorProcess) -> None:
    import re
    import sys

    env_url = ["--url", chat_pool.url, "--key", chat_pool.admin_key]
    made = subprocess.run(
        [sys.executable, "-m", "phage.client.cli", "keys", "create", "alice", "--limit", "20", *env_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    secret = re.search(r"phk_[A-Za-z0-9_-]+", made)
    assert secret, made
    alice = openai.OpenAI(base_url=f"{chat_pool.url}/v1", api_key=secret.group(0), max_retries=0)
    first = alice.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hello there"}], max_tokens=8
    )
    assert first.usage is not None and first.usage.total_tokens >= 20, "the prompt alone spends the limit"
    with pytest.raises(openai.APIStatusError) as spent:
        alice.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "again"}])
    assert spent.value.status_code == 402 and "tokens" in spent.value.message

    with chat_pool.client() as c:
        keys = c.get("/api/keys").json()["keys"]
        kid = next(k["id"] for k in keys if k["name"] == "alice")
        usage = c.get("/api/usage", params={"key_id": kid}).json()["keys"][0]
        assert usage["requests"] == 1 and usage["credit_left_tokens"] == 0
        assert usage["total_tokens"] == first.usage.total_tokens
        # a user sees only their own usage
        mine = httpx.get(
            f"{chat_pool.url}/api/usage", headers={"Authorization": f"Bearer {secret.group(0)}"}, timeout=30
        ).json()["keys"]
        assert [k["key_id"] for k in mine] == [kid]
        assert c.post(f"/api/keys/{kid}", json={"credit_limit_tokens": None}).status_code == 200
        alice.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "ok"}], max_tokens=2
        )
        assert c.delete(f"/api/keys/{kid}").status_code == 200
        bad = c.post("/api/keys", json={"name": "x", "role": "root"})
        assert bad.status_code == 400 and bad.json()["field"] == "role"
    with pytest.raises(openai.AuthenticationError):
        alice.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}])


def test_text_completions_through_the_openai_client(chat_pool: CoordinatorProcess) -> None:
    client = openai.OpenAI(base_url=f"{chat_pool.url}/v1", api_key=chat_pool.admin_key, max_retries=0)
    done = client.completions.create(model="tiny-llama", prompt="def add(a, b):", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert isinstance(done.choices[0].text, str) and done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 6 and done.usage.prompt_tokens > 0
    streamed = client.completions.create(
        model="tiny-llama", prompt="def add(a, b):", max_tokens=6, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    two = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2, seed=7
    )
    assert [c.index for c in two.choices] == [0, 1] and all(
        c.message.content is not None for c in two.choices
    )
    assert two.usage is not None and 0 < two.usage.completion_tokens <= 8
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-llama", prompt="x", echo=True)
    assert "echo" in bad.value.message
    with chat_pool.client() as c:
        log = c.get("/api/usage/requests", params={"limit": 5}).json()["requests"]
    assert [r["kind"] for r in log[:4]] == ["chat", "chat", "completion", "completion"]
