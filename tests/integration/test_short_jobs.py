"""Short jobs on default nodes: a node holds short tasks beyond its slots, yet never runs more
real work at once than its slots; every task gets a fresh sandbox that shows nothing of the last."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phage.sandbox import available_backends
from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_tasks_final

# the node-side claim window and workspace cache; the store is not what is tested
pytestmark = pytest.mark.backend_neutral

OVERLAP_JOB = "import time\nprint('span', time.time())\ntime.sleep(0.3)\nprint('span', time.time())\n"


def _spans(tasks: list[dict[str, object]]) -> list[tuple[float, float]]:
    spans = []
    for task in tasks:
        result = task["result"]
        assert isinstance(result, dict)
        times = [
            float(line.split()[1]) for line in result["stdout_tail"].splitlines() if line.startswith("span")
        ]
        spans.append((times[0], times[1]))
    return sorted(spans)


def test_a_node_holding_many_short_tasks_still_runs_only_its_slots_at_once(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]],
) -> None:
    coord, _ = pool(nodes=1, concurrency=1)
    wait_online(coord, 1)
    with coord.client() as c:
        # no-op tasks (first: higher priority) open the node's claim window wide (node/window.py),
        # so the jobs behind them all go to the node at once, to wait there for its one slot
        job = {"kind": "job", "files": {"main.py": OVERLAP_JOB}, "manifest": {"entrypoint": "main.py"}}
        noops = {"kind": "noop", "count": 50, "priority": 10}
        made = c.post("/api/tasks", json={"tasks": [noops, *[job] * 4]}).json()["tasks"]
        ids = [t["id"] for t in made[-4:]]
        final = wait_tasks_final(coord, ids, timeout=60)
    assert [t["state"] for t in final] == ["verified"] * 4
    spans = _spans(final)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two jobs ran at once on a one-slot node: {spans}"
    dispatched = [a["dispatched_at"] for t in final for a in t["attempts"]]
    assert max(dispatched) < spans[0][1], "the node held the queued jobs beside its busy slot"


CLUES = """
import os, pathlib, subprocess
seen = {
    "files": sorted(p.name for p in pathlib.Path(".").iterdir() if p.name != "main.py"),
    "tmp": sorted(os.listdir("/tmp")),
    "shm": sorted(os.listdir("/dev/shm")),
    "env": sorted(k for k in os.environ if k.startswith("CLUE")),
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}
print("seen", seen)
for place in ("left.txt", "/tmp/left", "/dev/shm/left"):  # wherever this backend lets it write
    try:
        pathlib.Path(place).write_text("clue")
    except OSError:
        pass
subprocess.Popen(["sleep", "30"], start_new_session=True)  # outlives the task, if anything lets it
"""


def _seen(task: dict[str, Any]) -> dict[str, list[Any]]:
    line = next(x for x in task["result"]["stdout_tail"].splitlines() if x.startswith("seen"))
    found: dict[str, list[Any]] = ast.literal_eval(line[len("seen ") :])
    return found


@pytest.mark.parametrize("sandbox_name", ["bwrap", "gvisor"])
def test_a_task_sees_nothing_of_the_task_before_it(sandbox_name: str, tmp_path: Path) -> None:
    reason = available_backends()[sandbox_name]
    if reason is not None:
        pytest.skip(f"{sandbox_name}: {reason}")
    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=0.5).start()
    node = NodeProcess(coord, tmp_path / "node", concurrency=1, sandbox=sandbox_name).start()
    try:
        wait_online(coord, 1)
        job = {
            "kind": "job",
            "files": {"main.py": CLUES},
            "manifest": {"entrypoint": "main.py", "env": {"CLUE_SECRET": "x"}},
        }
        with coord.client() as c:
            first = c.post("/api/tasks", json=job).json()["id"]
            wait_tasks_final(coord, [first], timeout=60)
            second = c.post("/api/tasks", json={**job, "manifest": {"entrypoint": "main.py"}}).json()["id"]
            before, after = wait_tasks_final(coord, [first, second], timeout=60)
        assert before["state"] == after["state"] == "verified", (before["result"], after["result"])
        assert _seen(before)["env"] == ["CLUE_SECRET"], "the first task had its clue to leave"
        seen = _seen(after)
        assert seen["files"] == [] and seen["tmp"] == [] and seen["shm"] == [], seen
        assert seen["env"] == [], "the environment of the task before leaked"
        assert len(seen["procs"]) <= 2, f"processes of the task before are visible: {seen['procs']}"
    finally:
        node.stop()
        coord.stop()


def test_streamed_workspaces_are_downloaded_once_per_node_and_each_task_unpacks_its_own(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]],
) -> None:
    coord, (node,) = pool(nodes=1, concurrency=1, env={"PHAGE_INLINE_WORKSPACE_BYTES": "0"})
    wait_online(coord, 1)
    script = "import pathlib\np = pathlib.Path('data.txt')\nprint('read', p.read_text())\n"
    script += "p.write_text('changed')\n"
    job = {
        "kind": "job",
        "files": {"main.py": script, "data.txt": "original"},
        "manifest": {"entrypoint": "main.py"},
    }
    with coord.client() as c:
        ids = [c.post("/api/tasks", json=job).json()["id"] for _ in range(2)]
        final = wait_tasks_final(coord, ids, timeout=60)
    assert [t["state"] for t in final] == ["verified"] * 2, [t["result"] for t in final]
    assert all("read original" in t["result"]["stdout_tail"] for t in final), "a fresh copy for each task"
    kept = list((node.key_dir / "workspaces").iterdir())
    assert len(kept) == 1 and len(kept[0].name) == 64, kept
