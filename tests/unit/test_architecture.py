"""The shape of the code: imports run downward only, and the core stays free of frameworks.

The import graph is built from the source with ``ast`` (nothing is imported), counting every
import, including those under ``TYPE_CHECKING`` and inside functions: a circle hidden in a
late import is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "phage"

PACKAGE_RANK = {
    "phage": 0,
    "errors": 0,
    "api": 2,
    "config": 1,
    "logs": 1,
    "domain": 1,
    "pki": 2,
    "sandbox": 2,
    "scheduler": 2,
    "store": 2,
    "training": 2,
    "protocol": 3,
    "testing": 3,
    "dataplane": 4,
    "testing_postgres": 4,
    "coordinator": 5,
    "node": 5,
    "client": 6,
    "testing_swarm": 6,
}
"""Layers of ``phage``: a package may import only from a lower layer (or from itself)."""

COORDINATOR_RANK = {
    # values and state every service shares
    **dict.fromkeys(
        [
            "bodies",
            "chat",
            "chat_request",
            "counters",
            "feed",
            "heap",
            "keys",
            "key_rates",
            "pool",
            "ratelimit",
            "requests",
            "settings",
            "state",
            "tried",
            "training_relay",
            "training_types",
            "uploads",
            "verify",
        ],
        0,
    ),
    # policies: they decide, and hold no service
    **dict.fromkeys(
        [
            "placement",
            "replication",
            "trust",
            "training_checks",
            "training_routes",
            "training_eval",
            "quotas",
            "sharded",
            "workloads",
        ],
        1,
    ),
    "sharded_chat": 2,
    "replicas": 1,
    # chat's metering and checking: they hold the router or the store's usage records, no service
    **dict.fromkeys(["metering", "chat_check"], 1),
    "ledger": 2,
    **dict.fromkeys(["admission", "intake", "overview", "retention", "sharded_tasks"], 3),
    "nodes": 4,
    **dict.fromkeys(["dispatch", "liveness", "training"], 5),
    "results": 6,
    "core": 7,
}
"""The coordinator's modules below its edges (routers, gRPC servicer, server): each may import
only lower ranks, so a batch task's path — intake, ledger, dispatch, results — walks forward,
and no service can reach back to the composition root."""

FRAMEWORKS = ("grpc", "fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn")


@dataclass
class Module:
    """One module of ``phage`` and what it imports."""

    name: str
    internal: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, name: str, is_package: bool) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            # ``from pkg import sub`` depends on the submodule; ``from mod import name`` on mod
            # (the caller strips names that are not modules)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def build_graph() -> dict[str, Module]:
    """Every module of ``phage`` with the modules (and outside packages) it imports."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, Module] = {}
    for name, path in files.items():
        mod = graph[name] = Module(name)
        tree = ast.parse(path.read_text(), str(path))
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            if imported.split(".")[0] != "phage":
                mod.external.add(imported.split(".")[0])
                continue
            target = imported
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                mod.internal.add(target)
    return graph


def _cycles(graph: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root].internal)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child].internal))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, Module]:
    return build_graph()


def test_the_graph_sees_every_module_and_its_imports(graph: dict[str, Module]) -> None:
    assert "phage.coordinator.core" in graph and "phage.domain.models" in graph
    assert "phage.coordinator.ledger" in graph["phage.coordinator.intake"].internal
    assert "sqlalchemy" in graph["phage.store.sql"].external


def test_the_cycle_finder_finds_a_cycle() -> None:
    made = {n: Module(n) for n in "abcd"}
    made["a"].internal, made["b"].internal, made["c"].internal = {"b"}, {"c"}, {"a", "d"}
    assert _cycles(made) == [["a", "b", "c"]]


def test_no_import_circle_anywhere(graph: dict[str, Module]) -> None:
    assert _cycles(graph) == []


def test_packages_import_only_lower_layers(graph: dict[str, Module]) -> None:
    assert {_package(n) for n in graph} <= set(PACKAGE_RANK), "a new package needs a layer"
    upward = [
        f"{mod.name} -> {dep}"
        for mod in graph.values()
        for dep in mod.internal
        if _package(dep) != _package(mod.name)
        and PACKAGE_RANK[_package(dep)] >= PACKAGE_RANK[_package(mod.name)]
        and dep != "phage"
    ]
    assert upward == []


def test_coordinator_services_import_forward_only(graph: dict[str, Module]) -> None:
    prefix = "phage.coordinator."
    wrong = []
    for short, rank in COORDINATOR_RANK.items():
        mod = graph[prefix + short]
        for dep in mod.internal:
            if not dep.startswith(prefix):
                continue
            dep_rank = COORDINATOR_RANK.get(dep.removeprefix(prefix))
            if dep_rank is None or dep_rank >= rank:
                wrong.append(f"{short} (rank {rank}) -> {dep.removeprefix(prefix)} (rank {dep_rank})")
    assert wrong == []


def test_a_batch_task_walks_forward() -> None:
    path = ["intake", "ledger", "dispatch", "results"]
    ranks = [COORDINATOR_RANK[m] for m in path]
    # submit (intake) hands to the ledger; dispatch and results build on it, results last
    assert ranks[1] < ranks[0] and ranks[1] < ranks[2] < ranks[3]


def _reachable(graph: dict[str, Module], start: str) -> set[str]:
    """Modules Python executes when importing ``start``: its imports and their packages, transitively."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        todo.extend(graph[name].internal)
        todo.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
    return seen


@pytest.mark.parametrize("package", ["domain", "scheduler"])
def test_domain_and_scheduler_stay_free_of_frameworks_and_services(
    graph: dict[str, Module], package: str
) -> None:
    for name in [n for n in graph if _package(n) == package]:
        reached = _reachable(graph, name)
        outside = {ext for mod in reached for ext in graph[mod].external}
        assert not outside & set(FRAMEWORKS), f"{name} pulls in {sorted(outside & set(FRAMEWORKS))}"
        higher = sorted(m for m in reached if _package(m) in ("coordinator", "node", "client"))
        assert higher == [], f"{name} pulls in {higher}"
