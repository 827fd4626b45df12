"""Shared fixtures for integration tests: real coordinator and node processes, on each database backend.

Every integration test module runs once per backend of ``PHAGE_TEST_DB`` (tests/conftest.py):
on PostgreSQL, ``PHAGE_DATABASE_URL`` names a fresh database for each test (and one for the
module's module-scoped coordinators), which every coordinator process a test starts inherits.
A module whose behaviour does not depend on the database says so with ``pytestmark =
pytest.mark.backend_neutral`` and the reason (sandbox escapes and engine servers run on a node with
no coordinator; bad input is refused at the HTTP edge before the store; chat failover, placement and
metrics are decided in memory); one that starts its own PostgreSQL servers says ``own_database``.
Either runs once, not once per backend: CI runs on two cores within 20 minutes, and running these
twice would add minutes without testing anything the store does.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from phage.testing import CoordinatorProcess, NodeProcess, stop_all
from phage.testing_postgres import PostgresServer
from tests.conftest import selected_backends


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = selected_backends()
        definition = metafunc.definition
        if definition.get_closest_marker("own_database"):
            metafunc.parametrize("backend", ["sqlite"], indirect=True, scope="module", ids=["own-server"])
            return
        if definition.get_closest_marker("backend_neutral"):
            backends = backends[:1]
        metafunc.parametrize("backend", backends, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's database backend; on PostgreSQL, a database for its module-scoped coordinators."""
    name = str(request.param)
    if name != "postgresql":
        yield name
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHAGE_DATABASE_URL", server.create_database())
        yield name


@pytest.fixture(autouse=True)
def fresh_database(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL, each test's coordinators start on an empty database of their own."""
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        monkeypatch.setenv("PHAGE_DATABASE_URL", server.create_database())


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]]:
    """Factory: ``pool(nodes=3)`` starts a coordinator and that many nodes; all stopped afterwards."""
    started: list[CoordinatorProcess | NodeProcess] = []

    def make(
        nodes: int = 2,
        concurrency: int = 4,
        heartbeat_s: float = 0.5,
        env: dict[str, str] | None = None,
        engine: str | None = None,
        model: str | None = None,
    ) -> tuple[CoordinatorProcess, list[NodeProcess]]:
        coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=heartbeat_s, env=env or {}).start()
        started.append(coord)
        made = []
        for i in range(nodes):
            node = NodeProcess(
                coord,
                tmp_path / f"node-{i}",
                name=f"node-{i}",
                concurrency=concurrency,
                heartbeat_s=heartbeat_s,
                engine=engine,
                model=model,
            ).start()
            started.append(node)
            made.append(node)
        return coord, made

    yield make
    stop_all(started)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-architecture model with random weights, made locally (no download)."""
    from phage.node.engines.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def job(value: str, sleep: float = 0.0, **extra: object) -> dict[str, object]:
    """A small shell job that writes ``value`` into out/result.txt (after sleeping)."""
    script = f"sleep {sleep}\nmkdir -p out\nprintf '%s' \"$1\" > out/result.txt\necho done $1\n"
    return {
        "kind": "job",
        "files": {"run.sh": script},
        "manifest": {
            "entrypoint": "run.sh",
            "interpreter": "sh",
            "args": [value],
            "outputs": ["out/*.txt"],
            "timeout_s": 60,
        },
        **extra,
    }


def collect_feed(
    coord: CoordinatorProcess, events: list[dict[str, Any]], stop: threading.Event
) -> tuple[threading.Thread, threading.Event]:
    """Append a coordinator's feed events to ``events`` from a thread until ``stop``; returns the thread
    and an event set once subscribed."""
    ready = threading.Event()

    async def main() -> None:
        url = coord.url.replace("http://", "ws://") + "/api/feed"
        headers = {"Authorization": f"Bearer {coord.admin_key}"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            ready.set()
            while not stop.is_set():
                try:
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
                except TimeoutError:
                    continue

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    return thread, ready
