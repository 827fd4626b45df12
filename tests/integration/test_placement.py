"""Model-aware placement with three nodes of different memory (8, 16 and 48 GB).

Each node runs the ``vllm`` engine manager — a real server process, here the
stand-in launched exactly as ``vllm serve MODEL …`` would be — so switching
models really restarts a server. Sizes come from the known-model table
(seed 000: Qwen2.5-Coder-7B ≈ 14 GB, Qwen2.5-72B-AWQ ≈ 40 GB).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_tasks_final

pytestmark = pytest.mark.backend_neutral  # model placement decides from live node memory, not the store

SMALL = "Qwen/Qwen2.5-0.5B-Instruct"
CODER = "Qwen/Qwen2.5-Coder-7B-Instruct"
BIG = "Qwen/Qwen2.5-72B-Instruct-AWQ"
HUGE = "meta-llama/Llama-3.1-405B-Instruct"
STANDIN = f"{sys.executable} -m phage.node.engines.standin"


def _generate(model: str, verifier: str = "test -s output.txt") -> dict[str, Any]:
    return {"kind": "generate", "prompt": "hi", "model": model, "verifier": verifier, "max_tokens": 4}


@pytest.fixture
def gpus(tmp_path: Path) -> Any:
    started: list[Any] = []
    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=0.5).start()
    started.append(coord)
    nodes = {}
    for name, memory in (("gpu-8", "8GB"), ("gpu-16", "16GB"), ("gpu-48", "48GB")):
        nodes[name] = NodeProcess(
            coord,
            tmp_path / name,
            name=name,
            concurrency=2,
            heartbeat_s=0.5,
            engine="vllm",
            model=SMALL,
            args=("--engine-command", STANDIN, "--model-memory", memory),
        ).start()
        started.append(nodes[name])
    wait_online(coord, 3, timeout=90)
    yield coord, {n.node_id: name for name, n in nodes.items()}
    stop_all(started)


def _run(coord: CoordinatorProcess, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with coord.client() as c:
        resp = c.post("/api/tasks", json={"tasks": tasks})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        ids = [t["id"] for t in body["tasks"]] if "tasks" in body else [body["id"]]
    done = wait_tasks_final(coord, ids, timeout=120)
    assert all(t["state"] == "verified" for t in done), [(t["state"], t.get("error")) for t in done]
    return done


def _where(done: list[dict[str, Any]], names: dict[str, str]) -> Counter[str]:
    return Counter(names[a["node_id"]] for t in done for a in t["attempts"] if a["state"] == "succeeded")


def test_models_go_only_where_they_fit_stick_and_spread_when_queues_grow(gpus: Any) -> None:
    coord, names = gpus

    # 1. Nobody has the 14 GB coder model: an idle node that fits is asked to load it — never the 8 GB one.
    first = _where(_run(coord, [_generate(CODER) for _ in range(2)]), names)
    assert len(first) == 1 and "gpu-8" not in first, first
    (holder,) = first

    # 2. Sticky: more of its work goes to the node that has it loaded, and nobody else loads it.
    assert _where(_run(coord, [_generate(CODER) for _ in range(3)]), names) == Counter({holder: 3})

    # 3. A model that fits no node is refused at submit, naming what it needs and what there is.
    with coord.client() as c:
        r = c.post("/api/tasks", json=_generate(HUGE))
        assert r.status_code == 400, r.text
        err = r.json()
        assert err["field"] == "model" and "810.0 GB" in err["message"] and "48.0 GB" in err["message"]
        # ... unless the caller asks to wait for a node that fits
        waiting = c.post("/api/tasks", json={**_generate(HUGE), "wait_for_model": True})
        assert waiting.status_code == 201
        c.delete(f"/api/tasks/{waiting.json()['id']}")

    # 4. The 40 GB model fits only the 48 GB node.
    assert set(_where(_run(coord, [_generate(BIG)]), names)) == {"gpu-48"}

    # 5. A growing queue for the coder model brings it to a second node that fits (still never the 8 GB one).
    spread = _where(_run(coord, [_generate(CODER, "sleep 1; test -s output.txt") for _ in range(16)]), names)
    assert set(spread) == {"gpu-16", "gpu-48"}, spread

    with coord.client() as c:
        nodes = {n["name"]: n for n in c.get("/api/nodes").json()["nodes"]}
    assert nodes["gpu-8"]["loaded_model"] == SMALL, "the small node was never asked to switch"
