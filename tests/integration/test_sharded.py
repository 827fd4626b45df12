"""Sharded models end to end: real coordinator and node processes, chains over mTLS, the openai client.

An 8-block tiny Llama made locally is declared on the coordinator; nodes started
with ``--serve-blocks`` hold ranges of it; chat through the chain must give the
whole model's greedy text exactly.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")

from phage.node.engines.base import ChatMessage, GenerationRequest
from phage.node.engines.tinymodel import make_tiny_model
from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_tasks_final, wait_until

# Chains run node to node over mutual TLS: the database is incidental here, so these run once;
# only declaring and showing a model through the CLI, which the store keeps, runs on both backends.
NEUTRAL = pytest.mark.backend_neutral

MESSAGES = [{"role": "user", "content": "def add(a, b):"}]
MAX_TOKENS = 32
BLOCK = 1000  # bytes per block as declared; nodes are given memory in these units


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny8", layers=8, name="tiny8")


@pytest.fixture(scope="module")
def whole_text(model8: Path) -> str:
    """The whole model's greedy answer, in one process, through the transformers engine."""
    from phage.node.engines.transformers import TransformersEngine

    async def run() -> str:
        engine = TransformersEngine(str(model8))
        request = GenerationRequest(
            messages=tuple(ChatMessage(**m) for m in MESSAGES), max_tokens=MAX_TOKENS, temperature=0.0
        )
        return (await engine.generate(request)).text

    text = asyncio.run(run())
    assert len(text) > 10  # long enough that a wrong token would show
    return text


@pytest.fixture
def sharded_pool(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``start(ranges)``: a coordinator with tiny8 declared and one node per ``--serve-blocks`` value."""
    started: list[CoordinatorProcess | NodeProcess] = []

    def coordinator(**env: str) -> CoordinatorProcess:
        coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=0.5, env=env).start()
        started.append(coord)
        return coord

    def node(
        coord: CoordinatorProcess,
        serve: str,
        i: int,
        memory_blocks: int = 8,
        extra: tuple[str, ...] = (),
        **env: str,
    ) -> NodeProcess:
        n = NodeProcess(
            coord,
            tmp_path / f"node-{i}",
            name=f"node-{i}",
            args=("--serve-blocks", serve, "--block-memory", str(memory_blocks * BLOCK), *extra),
            env=env,
        ).start()
        started.append(n)
        return n

    yield coordinator, node
    stop_all(started)


def declare(coord: CoordinatorProcess, model8: Path, **extra: Any) -> httpx.Response:
    with coord.client() as c:
        body = {
            "name": "tiny8",
            "checkpoint": str(model8),
            "num_blocks": 8,
            "bytes_per_block": BLOCK,
            **extra,
        }
        return c.post("/api/models/sharded", json=body)


def wait_ready(coord: CoordinatorProcess, timeout: float = 90.0) -> dict[str, Any]:
    with coord.client() as c:
        return wait_until(
            lambda: (info := c.get("/network/info").json())["ready_for_inference"] and info,
            timeout,
            interval=0.2,
            what="tiny8 ready for inference",
        )


def chat(coord: CoordinatorProcess, **extra: Any) -> dict[str, Any]:
    with coord.client() as c:
        body = {"model": "tiny8", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}
        r = c.post("/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return dict(r.json())


def chain_metrics(coord: CoordinatorProcess) -> dict[str, float]:
    """The coordinator's chain-step counters, from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{coord.url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "phage_sharded_chain_steps_total":
                found[sample.labels["path"]] = sample.value
            elif sample.name == "phage_sharded_failovers_total":
                found["failovers"] = sample.value
    return found


@NEUTRAL
@pytest.mark.parametrize(
    "ranges",
    # whole on one node, then over 2, 3 and 4 nodes with uneven ranges
    [["0:8"], ["0:3", "3:8"], ["0:2", "2:5", "5:8"], ["0:1", "1:4", "4:6", "6:8"]],
    ids=lambda r: "+".join(r),
)
def test_a_chain_of_node_processes_gives_the_whole_models_text(
    sharded_pool: Any, model8: Path, whole_text: str, ranges: list[str]
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator()
    assert declare(coord, model8).status_code == 201
    for i, r in enumerate(ranges):
        node(coord, r, i)
    info = wait_ready(coord)
    assert info["online_workers"] == len(ranges) and info["total_layers"] == 8
    answer = chat(coord)
    assert answer["choices"][0]["message"]["content"] == whole_text
    assert answer["usage"]["completion_tokens"] > 0
    # The chain decoded on its own: every step after the prompt's went node to node (a single
    # node fed itself), the coordinator only reading along.
    steps, tokens = chain_metrics(coord), answer["usage"]["completion_tokens"]
    assert steps["node-to-node"] >= tokens - 1 and steps["through-coordinator"] == 1  # the prompt's
    with coord.client() as c:
        (used,) = c.get("/api/models/sharded/usage").json()
        assert len(used["worker_ids"]) == len(ranges)
        workers = {w["nickname"]: w for w in c.get("/workers").json()}
    for i, r in enumerate(ranges):
        start, end = map(int, r.split(":"))
        assert (workers[f"node-{i}"]["layers_start"], workers[f"node-{i}"]["layers_end"]) == (start, end)


@NEUTRAL
def test_the_openai_client_streams_from_a_sharded_model(
    sharded_pool: Any, model8: Path, whole_text: str
) -> None:
    from openai import OpenAI

    coordinator, node = sharded_pool
    coord = coordinator()
    declare(coord, model8)
    node(coord, "0:5", 0)
    node(coord, "5:8", 1)
    wait_ready(coord)
    client = OpenAI(base_url=f"{coord.url}/v1", api_key=coord.admin_key)
    stream = client.chat.completions.create(
        model="tiny8",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == whole_text
    assert len(parts) > 3  # it really streamed
    assert usage is not None and usage.completion_tokens > 0
    with coord.client() as c:  # each node measured its own steps and says so in its heartbeat
        wait_until(
            lambda: all(s["throughput"] > 0 for s in c.get("/api/models/tiny8/coverage").json()["servers"]),
            10,
            what="measured throughput in the coverage",
        )
    # stop strings and max_tokens work as for a whole model
    cut = chat(coord, stop=[whole_text[5:8]])
    assert cut["choices"][0]["message"]["content"] == whole_text[: whole_text.index(whole_text[5:8])]
    assert cut["choices"][0]["finish_reason"] == "stop"
    short = chat(coord, max_tokens=3)
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    # seeded sampling is reproducible
    a, b = (chat(coord, temperature=0.9, seed=7) for _ in range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


@NEUTRAL
def test_kill_9_of_the_middle_node_mid_generation_changes_nothing(
    sharded_pool: Any, model8: Path, whole_text: str
) -> None:
    from openai import OpenAI

    coordinator, node = sharded_pool
    coord = coordinator()
    declare(coord, model8)
    slow = {"PHAGE_TEST_STAGE_DELAY_MS": "60"}
    node(coord, "0:3", 0, **slow)
    middle = node(coord, "3:6", 1, **slow)
    node(coord, "6:8", 2, **slow)
    wait_ready(coord)
    with coord.client() as c:
        wait_until(lambda: len(c.get("/workers").json()) == 3, 30, what="three workers")
    standby = node(coord, "3:6", 3, **slow)
    with coord.client() as c:
        wait_until(
            lambda: any(
                w["nickname"] == "node-3" and w["layers_start"] == 3 for w in c.get("/workers").json()
            ),
            90,
            what="the standby holding blocks 3:6",
        )
        assert next(w for w in c.get("/workers").json() if w["nickname"] == "node-3")["is_idle"]
    client = OpenAI(base_url=f"{coord.url}/v1", api_key=coord.admin_key)
    stream = client.chat.completions.create(
        model="tiny8",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    parts: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            if len(parts) == 4:
                middle.kill()  # SIGKILL, mid-generation
    assert middle.proc is not None and middle.proc.returncode is not None
    assert "".join(parts) == whole_text
    steps = chain_metrics(coord)  # node to node before the kill and after the failover
    assert steps["failovers"] == 1 and steps["node-to-node"] >= len(parts) - 1
    with coord.client() as c:
        (used,) = c.get("/api/models/sharded/usage").json()
    assert standby.node_id in used["worker_ids"] and middle.node_id not in used["worker_ids"]


@NEUTRAL
def test_bad_input_is_refused_clearly(sharded_pool: Any, model8: Path) -> None:
    coordinator, node = sharded_pool
    coord = coordinator()
    r = declare(coord, model8, num_blocks=6)
    assert (
        r.status_code == 400
        and r.json()["field"] == "num_blocks"
        and "cover the checkpoint" in r.json()["message"]
    )
    r = declare(coord, model8, bytes_per_block=0)
    assert r.status_code == 400 and "bytes_per_block" in r.json()["field"]
    assert declare(coord, model8).status_code == 201
    assert declare(coord, model8).status_code == 409
    node(coord, "0:4", 0)
    outside = node(coord, "6:12", 1)
    too_big = node(coord, "0:8", 2, memory_blocks=3)
    with coord.client() as c:

        def errors() -> dict[str, str]:
            found = {w["nickname"]: w["error"] for w in c.get("/workers").json() if w["error"]}
            return found if len(found) == 2 else {}

        found = wait_until(errors, 60, what="both bad offers refused")
        assert "outside" in found["node-1"] and "0:8" in found["node-1"]
        assert "need 8000 bytes" in found["node-2"] and "offers 3000" in found["node-2"]
        wait_until(
            lambda: c.get("/api/models/tiny8/coverage").json()["coverage_percent"] == 50.0, 60, what="0:4"
        )
        r = c.post("/v1/chat/completions", json={"model": "tiny8", "messages": MESSAGES})
        assert r.status_code == 503
        assert "4:8" in r.json()["error"]["message"]
        assert c.get("/api/models/nope/coverage").status_code == 404
    del outside, too_big


@NEUTRAL
def test_coverage_grows_as_nodes_join_and_a_standby_takes_a_gap(sharded_pool: Any, model8: Path) -> None:
    heartbeat = 0.5  # the pool's heartbeat interval (sharded_pool)
    coordinator, node = sharded_pool
    coord = coordinator()
    declare(coord, model8)
    c = coord.client()

    def workers() -> dict[str, dict[str, Any]]:
        return {w["nickname"]: w for w in c.get("/workers").json()}

    def network_info() -> dict[str, Any]:
        """``/network/info``, whose model fields are right whatever the coverage."""
        got: dict[str, Any] = c.get("/network/info").json()
        assert (got["model_name"], got["total_layers"]) == ("tiny8", 8), got
        return got

    def info_when(what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            got = network_info()
            return got if check(got) else None

        return wait_until(probe, 90, 0.05, what)

    info = network_info()  # declared, nobody serving yet
    assert (
        info["coverage_percent"] == 0.0 and info["missing_layers"] == ["0:8"] and info["online_workers"] == 0
    )
    nodes = []
    # Each node has memory for half the blocks: Petals' rule puts the first at 0:4 …
    nodes.append(node(coord, "auto", 0, memory_blocks=4))
    info = info_when("the first half served", lambda i: i["coverage_percent"] == 50.0)
    assert (
        not info["ready_for_inference"] and info["missing_layers"] == ["4:8"] and info["online_workers"] == 1
    )
    assert (workers()["node-0"]["layers_start"], workers()["node-0"]["layers_end"]) == (0, 4)
    # … the second where coverage is weakest: the gap, which closes it.
    nodes.append(node(coord, "auto", 1, memory_blocks=4))
    info = info_when("every block served", lambda i: i["ready_for_inference"])
    assert info["coverage_percent"] == 100.0 and info["missing_layers"] == [] and info["online_workers"] == 2
    assert (workers()["node-1"]["layers_start"], workers()["node-1"]["layers_end"]) == (4, 8)
    assert len(info["bootstrap_peers"]) == 2
    # Every block is served at redundancy 1: the third is a standby on the weakest range.
    nodes.append(node(coord, "auto", 2, memory_blocks=4))
    wait_until(
        lambda: workers().get("node-2", {}).get("layers_start") is not None, 90, what="the standby loaded"
    )
    assert workers()["node-2"]["is_idle"]
    info = network_info()
    assert info["online_workers"] == 3 and info["ready_for_inference"] and info["coverage_percent"] == 100.0
    # The node holding 4:8 leaves (its last heartbeat says so): coverage drops, and the standby's next
    # heartbeat, at most one interval later, moves it to the gap. The node takes a while to exit, and
    # the tiny model loads in moments, so both are watched while it stops.
    leaving = threading.Thread(target=nodes[1].stop)
    leaving.start()
    gap_at = moved_at = None
    deadline = time.monotonic() + 30
    while moved_at is None and time.monotonic() < deadline:
        info = network_info()
        now = time.monotonic()
        if gap_at is None and not info["ready_for_inference"]:
            gap_at = now
            assert info["coverage_percent"] == 50.0 and info["missing_layers"] == ["4:8"], info
        if gap_at is not None and workers()["node-2"]["assigned_start"] == 4:
            moved_at = now
        time.sleep(0.02)
    leaving.join()
    assert gap_at is not None and moved_at is not None, "the gap was never seen, or never filled"
    took = moved_at - gap_at
    assert took <= heartbeat + 0.3, f"the standby was moved {took:.2f} s after the gap opened"
    info = info_when("every block served again", lambda i: i["ready_for_inference"])
    assert info["online_workers"] == 2 and info["coverage_percent"] == 100.0 and info["missing_layers"] == []
    assert (workers()["node-2"]["layers_start"], workers()["node-2"]["layers_end"]) == (4, 8)
    health = c.get("/network/health").json()
    assert [layer["workers"] for layer in health["layers"]] == [1] * 8
    c.close()


@NEUTRAL
def test_an_open_pool_quarantines_a_node_that_corrupts_its_activations(
    sharded_pool: Any, model8: Path, whole_text: str
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator(PHAGE_ADMISSION="open", PHAGE_SHARDED_CHECK_RATE="1")
    declare(coord, model8)
    node(coord, "0:4", 0)
    liar = node(coord, "4:8", 1, PHAGE_TEST_NOISY_ACTIVATIONS="0.01")
    with coord.client() as c:
        wait_until(
            lambda: c.get("/network/info").json()["ready_for_inference"], 90, what="the liar in the chain"
        )
    node(coord, "4:8", 2)
    node(coord, "4:8", 3)
    with coord.client() as c:
        wait_until(
            lambda: c.get("/api/models/tiny8/coverage").json()["per_block"] == [1] * 4 + [3] * 4,
            90,
            what="two more nodes holding 4:8",
        )
    # Every node of an open pool is untrusted: each step is recomputed elsewhere, a referee breaks ties.
    answer = chat(coord)
    assert answer["choices"][0]["message"]["content"] == whole_text  # the liar's steps never reached the text
    with coord.client() as c:
        nodes = {n["id"]: n for n in c.get("/api/nodes").json()["nodes"]}
        liar_view = nodes[liar.node_id]
        assert liar_view["quarantined"], liar_view
        assert "activations of blocks 4:8" in liar_view["quarantine_reason"]
        assert [n for n in nodes.values() if n["quarantined"]] == [liar_view]  # nobody honest
        assert liar.node_id not in {w["worker_id"] for w in c.get("/workers").json()}


def test_the_cli_declares_and_shows_sharded_models(sharded_pool: Any, model8: Path) -> None:
    import subprocess
    import sys

    coordinator, _node = sharded_pool
    coord = coordinator()
    cli = [sys.executable, "-m", "phage.client.cli", "models"]
    auth = ["--url", coord.url, "--key", coord.admin_key]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, *auth], capture_output=True, text=True, timeout=60)

    bad = run("declare", "tiny8", "--checkpoint", str(model8), "--blocks", "6", "--bytes-per-block", "1KiB")
    assert bad.returncode == 1 and "cover the checkpoint" in bad.stderr
    made = run("declare", "tiny8", "--checkpoint", str(model8), "--blocks", "8", "--bytes-per-block", "1KiB")
    assert made.returncode == 0, made.stderr
    listed = run()
    assert listed.returncode == 0 and "tiny8" in listed.stdout and "0.0%" in listed.stdout
    with coord.client() as c:
        (model,) = c.get("/api/models/sharded").json()["models"]
    assert model["bytes_per_block"] == 1024 and model["num_blocks"] == 8
    assert run("delete", "tiny8").returncode == 0
    with coord.client() as c:
        assert c.get("/api/models/sharded").json()["models"] == []


@NEUTRAL
def test_a_client_hanging_up_ends_the_session_on_every_hop(sharded_pool: Any, model8: Path) -> None:
    coordinator, node = sharded_pool
    coord = coordinator()
    declare(coord, model8)
    slow = {"PHAGE_TEST_STAGE_DELAY_MS": "60"}  # 200 tokens would take over half a minute
    for i, r in enumerate(["0:3", "3:6", "6:8"]):
        node(coord, r, i, **slow)
    wait_ready(coord)
    c = coord.client()

    def sessions() -> list[int]:
        return [w["active_sessions"] for w in sorted(c.get("/workers").json(), key=lambda w: w["nickname"])]

    body = {"model": "tiny8", "messages": MESSAGES, "max_tokens": 200, "temperature": 0, "stream": True}
    seen_open = False
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{coord.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {coord.admin_key}"},
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            # every hop reports the session's cache in its heartbeat while the stream runs
            if line.startswith("data: {") and sessions() == [1, 1, 1]:
                seen_open = True
                break  # hang up mid-generation
    assert seen_open, "the stream ended before every hop reported its session"
    hung_up = time.monotonic()
    wait_until(lambda: sessions() == [0, 0, 0], 10, 0.05, "every hop to drop the session")
    assert time.monotonic() - hung_up < 4 * 0.5 + 1.0  # a few heartbeats, not the 200 tokens' half minute
    assert c.get("/api/models/sharded/usage").json() == []  # the generation never finished
    c.close()


@NEUTRAL
def test_in_approval_mode_a_node_gets_its_blocks_only_once_approved(
    sharded_pool: Any, model8: Path, whole_text: str
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator(PHAGE_ADMISSION="approval")
    declare(coord, model8)
    first, second = node(coord, "auto", 0, memory_blocks=4), node(coord, "auto", 1, memory_blocks=4)
    c = coord.client()

    def state(n: Any) -> str:
        return str(next(x for x in c.get("/api/nodes").json()["nodes"] if x["id"] == n.node_id)["state"])

    wait_until(lambda: state(first) == "pending" and state(second) == "pending", 60, what="both pending")
    # Pending nodes heartbeat with their offers, but no range is assigned and no block counts.
    deadline = time.monotonic() + 3 * 0.5
    while time.monotonic() < deadline:
        assert c.get("/workers").json() == [] and c.get("/network/info").json()["coverage_percent"] == 0.0
        time.sleep(0.1)
    assert c.post(f"/api/nodes/{first.node_id}/approve").status_code == 200
    wait_until(
        lambda: (
            [(w["worker_id"], w["layers_start"]) for w in c.get("/workers").json()] == [(first.node_id, 0)]
        ),
        90,
        what="the approved node holding blocks 0:4",
    )
    info = c.get("/network/info").json()
    assert info["coverage_percent"] == 50.0 and info["missing_layers"] == ["4:8"]
    assert state(second) == "pending"
    assert c.post(f"/api/nodes/{second.node_id}/approve").status_code == 200
    wait_until(lambda: c.get("/network/info").json()["ready_for_inference"], 90, what="both halves held")
    workers = {w["worker_id"]: w for w in c.get("/workers").json()}
    assert (workers[second.node_id]["layers_start"], workers[second.node_id]["layers_end"]) == (4, 8)
    c.close()
    assert chat(coord)["choices"][0]["message"]["content"] == whole_text


@NEUTRAL
def test_a_token_pool_node_marked_untrusted_has_its_activations_checked(
    sharded_pool: Any, model8: Path, whole_text: str
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator(PHAGE_SHARDED_CHECK_RATE="1")  # a token pool: every node joins trusted
    declare(coord, model8)
    node(coord, "0:4", 0)
    liar = node(coord, "4:8", 1, PHAGE_TEST_NOISY_ACTIVATIONS="0.01")
    wait_ready(coord)
    honest = node(coord, "4:8", 2)
    c = coord.client()
    wait_until(
        lambda: c.get("/api/models/tiny8/coverage").json()["per_block"] == [1] * 4 + [2] * 4,
        90,
        what="a second node holding 4:8",
    )

    def quarantined() -> dict[str, str]:
        return {
            n["id"]: n["quarantine_reason"] for n in c.get("/api/nodes").json()["nodes"] if n["quarantined"]
        }

    since = {w["worker_id"]: w["serving_since"] for w in c.get("/workers").json()}
    # A trusted node's activations are taken as they come: nothing is recomputed.
    chat(coord)
    assert quarantined() == {}
    # The first chat loads the tokenizer off the coordinator's event loop: no node's lease lapsed meanwhile.
    assert {w["worker_id"]: w["serving_since"] for w in c.get("/workers").json()} == since
    # The admin marks it untrusted: from the next chat on, its steps are recomputed by the trusted node.
    r = c.post(f"/api/nodes/{liar.node_id}", json={"trusted": False})
    assert r.status_code == 200 and r.json()["trusted"] is False
    assert chat(coord)["choices"][0]["message"]["content"] == whole_text
    caught = quarantined()
    assert list(caught) == [liar.node_id]
    assert "activations of blocks 4:8" in caught[liar.node_id]
    assert honest.node_id[:16] in caught[liar.node_id]  # the witness: the trusted node holding 4:8
    c.close()


PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def whole_completion(model8: Path) -> str:
    """The whole model's greedy continuation of the raw ``PROMPT`` (what a generate task asks for)."""
    from phage.node.engines.transformers import TransformersEngine

    async def run() -> str:
        engine = TransformersEngine(str(model8))
        request = GenerationRequest(prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)
        return (await engine.generate(request)).text

    return asyncio.run(run())


def generate_task(expected: str, **extra: Any) -> dict[str, Any]:
    """A generate task for tiny8 whose verifier passes only on the whole model's exact text."""
    return {
        "kind": "generate",
        "prompt": PROMPT,
        "model": "tiny8",
        "verifier": "cmp output.txt expected.txt",
        "files": {"expected.txt": expected},
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **extra,
    }


@NEUTRAL
def test_a_generate_task_on_a_sharded_model_runs_through_a_chain_and_its_verifier(
    sharded_pool: Any, model8: Path, whole_completion: str
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator()
    declare(coord, model8)
    c = coord.client()
    # Not ready: refused with the blocks nobody holds, unless the task may wait for them.
    early = c.post("/api/tasks", json=generate_task(whole_completion))
    assert early.status_code == 503 and "0:8" in early.json()["message"], early.text
    waiting = c.post("/api/tasks", json=generate_task(whole_completion, wait_for_model=True))
    assert waiting.status_code == 201, waiting.text
    # check_every_stage is for sharded models only
    whole = c.post(
        "/api/tasks", json=generate_task(whole_completion, model="tiny-llama", check_every_stage=True)
    )
    assert whole.status_code == 400 and whole.json()["field"] == "check_every_stage"
    node(coord, "0:4", 0)
    node(coord, "4:8", 1)
    (done,) = wait_tasks_final(coord, [waiting.json()["id"]], timeout=120)
    assert done["state"] == "verified", done
    (attempt,) = done["attempts"]
    assert attempt["passed"] and "through 2 hops" in attempt["verifier_log"]
    assert done["result"]["output_text"] == whole_completion  # token for token the whole model's
    assert done["result"]["engine"] == "sharded" and done["result"]["completion_tokens"] > 0
    assert c.get(f"/api/tasks/{done['id']}/outputs/output.txt").text == whole_completion
    (used,) = c.get("/api/models/sharded/usage").json()
    assert len(used["worker_ids"]) == 2
    # A verifier that fails: the task fails, with the verifier's exit code and its log.
    bad = c.post(
        "/api/tasks", json=generate_task(whole_completion, verifier="echo not this; exit 3", max_attempts=1)
    )
    assert bad.status_code == 201, bad.text
    (failed,) = wait_tasks_final(coord, [bad.json()["id"]], timeout=120)
    assert failed["state"] == "failed" and "exit code 3" in failed["error"], failed
    assert "not this" in failed["attempts"][0]["verifier_log"]
    c.close()


@NEUTRAL
def test_check_every_stage_catches_a_trusted_node_the_pool_would_not_sample(
    sharded_pool: Any, model8: Path, whole_completion: str
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator(PHAGE_SHARDED_CHECK_RATE="0")  # a token pool that checks nothing by itself
    declare(coord, model8)
    node(coord, "0:4", 0)
    liar = node(coord, "4:8", 1, PHAGE_TEST_NOISY_ACTIVATIONS="0.01")
    wait_ready(coord)
    node(coord, "4:8", 2)
    node(coord, "4:8", 3)  # with every hop unproven, a disagreement needs a referee
    c = coord.client()
    wait_until(
        lambda: c.get("/api/models/tiny8/coverage").json()["per_block"] == [1] * 4 + [3] * 4,
        90,
        what="three nodes holding 4:8",
    )
    made = c.post("/api/tasks", json=generate_task(whole_completion, check_every_stage=True))
    assert made.status_code == 201, made.text
    (done,) = wait_tasks_final(coord, [made.json()["id"]], timeout=120)
    assert done["state"] == "verified", done
    assert done["result"]["output_text"] == whole_completion  # the liar's steps were replaced by replay
    checked = re.search(r"(\d+) steps recomputed on other nodes", done["attempts"][0]["verifier_log"])
    assert checked is not None and int(checked.group(1)) >= done["result"]["completion_tokens"]
    nodes = {n["id"]: n for n in c.get("/api/nodes").json()["nodes"]}
    assert [n["id"] for n in nodes.values() if n["quarantined"]] == [liar.node_id]
    assert "activations of blocks 4:8" in nodes[liar.node_id]["quarantine_reason"]
    c.close()


@NEUTRAL
def test_a_node_that_cannot_accept_connections_serves_its_blocks_through_the_relay(
    sharded_pool: Any, model8: Path, whole_text: str
) -> None:
    coordinator, node = sharded_pool
    coord = coordinator(PHAGE_SHARDED_CHECK_RATE="1", PHAGE_ADMISSION="open")  # every hop's steps checked
    declare(coord, model8)
    node(coord, "0:3", 0)
    node(coord, "3:6", 1, extra=("--dataplane-relay",))  # the middle of the chain, and …
    node(coord, "6:8", 2, extra=("--dataplane-relay",))
    wait_ready(coord)
    node(coord, "6:8", 3)  # … the verifier of the last hop is dialled directly while the hop is relayed
    c = coord.client()
    wait_until(
        lambda: c.get("/api/models/tiny8/coverage").json()["per_block"] == [1] * 6 + [2] * 2,
        90,
        what="every node holding its blocks",
    )
    workers = {w["nickname"]: w for w in c.get("/workers").json()}
    assert [workers[f"node-{i}"]["address"] for i in (1, 2)] == ["relay", "relay"]
    assert ":" in workers["node-0"]["address"]
    answer = chat(coord)
    assert answer["choices"][0]["message"]["content"] == whole_text
    steps = chain_metrics(coord)  # relayed and checked hops: every output comes back through the coordinator
    assert steps["node-to-node"] == 0 and steps["through-coordinator"] > 0
    (used,) = c.get("/api/models/sharded/usage").json()  # node-3 is the standby, node-2's verifier
    assert used["worker_ids"] == [workers[f"node-{i}"]["worker_id"] for i in (0, 1, 2)]
    # the relayed sessions ended with the chat, and no node was quarantined over a relayed step
    wait_until(
        lambda: all(w["active_sessions"] == 0 for w in c.get("/workers").json()), 10, what="sessions closed"
    )
    assert not [n for n in c.get("/api/nodes").json()["nodes"] if n["quarantined"]]
    c.close()
