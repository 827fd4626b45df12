"""PostgreSQL stopped under load, then started again: the pool says so, keeps its work, and loses nothing.

While the database is away: ``/healthz`` answers 503, submissions answer 503 with
``Retry-After`` (never a 500, never a hang), nodes stay online and finish the jobs
they hold. Once it is back, everything resumes by itself: the results the nodes
kept retrying are recorded, every task the API acknowledged (201) is verified,
each by exactly one attempt.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_tasks_final, wait_until
from phage.testing_postgres import PostgresServer
from tests.conftest import selected_backends

pytestmark = [
    pytest.mark.own_database,
    pytest.mark.skipif("postgresql" not in selected_backends(), reason="PHAGE_TEST_DB leaves PostgreSQL out"),
]

LONG_JOBS = 6
"""Held by the nodes across the outage (two nodes × three slots)."""


def marker_job(marker_dir: Path, value: str) -> dict[str, object]:
    """A job that waits until it may finish (a file the test writes), leaving a mark that it ran."""
    script = (
        f"touch {marker_dir}/started-$1\n"
        f"while [ ! -e {marker_dir}/go ]; do sleep 0.05; done\n"
        f"touch {marker_dir}/finished-$1\nmkdir -p out\nprintf '%s' \"$1\" > out/result.txt\n"
    )
    return {
        "kind": "job",
        "files": {"run.sh": script},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "args": [value], "timeout_s": 120},
    }


def small_job(value: str) -> dict[str, object]:
    """A quick job whose output names it."""
    script = "mkdir -p out\nprintf '%s' \"$1\" > out/result.txt\n"
    return {
        "kind": "job",
        "files": {"run.sh": script},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "args": [value], "outputs": ["out/*.txt"]},
    }


class Load:
    """Submits small jobs back to back from a thread, recording every answer."""

    def __init__(self, coord: CoordinatorProcess) -> None:
        self.coord = coord
        self.accepted: dict[str, str] = {}
        """task id → value, for every 201."""
        self.answers: list[tuple[int, float, str | None]] = []
        """(status, seconds taken, Retry-After) per submission."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.coord.client() as c:
            i = 0
            while not self._stop.is_set():
                value = f"v{i}"
                i += 1
                began = time.monotonic()
                try:
                    r = c.post("/api/tasks", json=small_job(value), timeout=15)
                except httpx.HTTPError:
                    self.answers.append((0, time.monotonic() - began, None))
                    continue
                self.answers.append((r.status_code, time.monotonic() - began, r.headers.get("retry-after")))
                if r.status_code == 201:
                    self.accepted[r.json()["id"]] = value
                elif r.status_code == 503:
                    self._stop.wait(0.05)  # a polite client backs off a little

    def start(self) -> Load:
        self._thread.start()
        return self

    def count(self, status: int) -> int:
        return sum(1 for s, _, _ in self.answers if s == status)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_postgres_outage_under_load_loses_nothing(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    started: list[CoordinatorProcess | NodeProcess] = []
    with PostgresServer() as pg:
        coord = CoordinatorProcess(tmp_path / "coordinator", database_url=pg.create_database()).start()
        started.append(coord)
        try:
            for i in range(2):
                started.append(
                    NodeProcess(coord, tmp_path / f"node-{i}", name=f"node-{i}", concurrency=3).start()
                )
            wait_online(coord, 2)
            with coord.client() as c:
                long_ids = [
                    c.post("/api/tasks", json=marker_job(marks, f"L{i}")).json()["id"] for i in range(6)
                ]
            wait_until(lambda: len(list(marks.glob("started-*"))) == LONG_JOBS, 60, what="long jobs running")
            load = Load(coord).start()
            wait_until(lambda: load.count(201) >= 20, 60, what="load flowing before the outage")

            pg.stop()
            with coord.client() as c:
                health = wait_until(
                    lambda: (r := c.get("/healthz", timeout=15)).status_code == 503 and r,
                    30,
                    what="/healthz 503 with PostgreSQL stopped",
                )
                assert health.headers["retry-after"] == "2"
                wait_until(lambda: load.count(503) >= 10, 30, what="submissions refused with 503")
                # the nodes finish the jobs they hold while the database is away; their results wait
                (marks / "go").touch()
                wait_until(
                    lambda: len(list(marks.glob("finished-*"))) == LONG_JOBS, 60, what="held jobs finishing"
                )
                refused = c.get(f"/api/tasks/{long_ids[0]}", timeout=15)
                assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
                outage_503s = load.count(503)

                pg.start()
                wait_until(lambda: c.get("/healthz", timeout=15).status_code == 200, 30, what="healthz 200")
                after = load.count(201)
                wait_until(lambda: load.count(201) >= after + 20, 60, what="submissions accepted again")
            load.stop()

            statuses = {s for s, _, _ in load.answers}
            assert statuses <= {201, 503}, f"only 201 or 503, never an error or a hang: {statuses}"
            assert outage_503s >= 10
            assert all(ra == "2" for s, _, ra in load.answers if s == 503)
            assert max(t for _, t, _ in load.answers) < 12, "a refusal is prompt, not a hang"

            final = wait_tasks_final(coord, [*long_ids, *load.accepted], timeout=180)
            assert all(t["state"] == "verified" for t in final), [
                t for t in final if t["state"] != "verified"
            ]
            by_id = {t["id"]: t for t in final}
            for tid in long_ids:  # kept by their node through the outage: one attempt each, no requeue
                assert [a["state"] for a in by_id[tid]["attempts"]] == ["succeeded"], by_id[tid]["attempts"]
            with coord.client() as c:
                for tid, value in list(load.accepted.items())[:: max(1, len(load.accepted) // 25)]:
                    out = c.get(f"/api/tasks/{tid}/outputs/out/result.txt")
                    assert out.status_code == 200 and out.text == value
                nodes = c.get("/api/nodes").json()["nodes"]
            assert sorted(n["state"] for n in nodes) == ["online", "online"]
            print(
                f"outage: {load.count(201)} submissions accepted, {load.count(503)} refused with 503, "
                f"slowest answer {max(t for _, t, _ in load.answers):.2f}s; {len(final)} tasks verified"
            )
        finally:
            stop_all(started)
