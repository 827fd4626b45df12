"""Shared fixtures for integration tests: real coordinator and node processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phage.testing import CoordinatorProcess, NodeProcess


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
    for proc in reversed(started):
        proc.stop()


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
