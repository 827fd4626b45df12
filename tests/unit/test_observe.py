"""The feed observer: outcomes counted once, queue waits and run times measured from event times."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from phage.coordinator.core import Coordinator
from phage.coordinator.dashboard import History
from phage.coordinator.observe import Finished, TaskObserver
from phage.coordinator.pool import OpenAttempt


def _observer(attempts: dict[str, OpenAttempt] | None = None) -> TaskObserver:
    fake = SimpleNamespace(pool=SimpleNamespace(attempts=attempts or {}))
    return TaskObserver(cast(Coordinator, fake), max_tracked=3)


def _task(task_id: str, state: str, ts: float, **extra: Any) -> dict[str, Any]:
    return {"type": "task", "id": task_id, "state": state, "ts": ts, **extra}


def test_waits_and_run_times_come_from_event_times() -> None:
    obs = _observer()
    waits: list[tuple[str, float]] = []
    done: list[Finished] = []
    obs.on_dispatch.append(lambda kind, wait: waits.append((kind, wait)))
    obs.on_finish.append(done.append)
    obs.handle(_task("t1", "queued", 100.0, kind="job"))
    obs.handle(_task("t1", "dispatched", 100.5))
    obs.handle(_task("t1", "running", 100.6))
    obs.handle(_task("t1", "queued", 103.0, reason="node died"))  # requeued: the next wait starts here
    obs.handle(_task("t1", "dispatched", 104.0))
    obs.handle(_task("t1", "verified", 106.0))
    assert waits == [("job", 0.5), ("job", 1.0)]
    assert done == [Finished("t1", "job", "verified", 5.5)]  # from the first dispatch
    assert obs.outcomes == {"verified": 1, "failed": 0, "cancelled": 0}


def test_an_outcome_counts_once_and_unseen_tasks_have_no_timings() -> None:
    obs = _observer()
    done: list[Finished] = []
    obs.on_finish.append(done.append)
    obs.handle(_task("t2", "cancelled", 5.0))
    obs.handle(_task("t2", "cancelled", 6.0))  # cancelling twice publishes twice
    assert obs.outcomes["cancelled"] == 1
    assert done == [Finished("t2", "unknown", "cancelled", None)]


def test_kind_of_a_recovered_task_comes_from_its_open_attempt() -> None:
    att = OpenAttempt("a1", "t3", "n1", 0.0, kind="generate")
    obs = _observer({"a1": att})
    done: list[Finished] = []
    obs.on_finish.append(done.append)
    obs.handle(_task("t3", "dispatched", 1.0, attempt="a1"))
    obs.handle(_task("t3", "failed", 3.0))
    assert done == [Finished("t3", "generate", "failed", 2.0)]


def test_memory_is_bounded_and_lag_is_counted() -> None:
    obs = _observer()
    for i in range(10):
        obs.handle(_task(f"t{i}", "queued", float(i), kind="job"))
    assert len(obs._open) == 3
    obs.handle({"type": "lagged", "dropped": 7})
    obs.handle({"type": "node", "id": "n", "state": "online"})
    assert obs.dropped == 7


def test_history_throughput_is_finished_tasks_per_minute_over_the_window() -> None:
    obs = _observer()
    fake = SimpleNamespace(
        queue=[], pool=SimpleNamespace(attempts={}, online_nodes=lambda: []), clock=lambda: 0.0
    )
    history = History(cast(Coordinator, fake), obs, size=100)
    history.sample(0.0)
    for i in range(6):
        obs.handle(_task(f"t{i}", "verified", 1.0))
    point = history.sample(10.0)
    assert point["verified"] == 6 and point["done"] == 6
    assert point["per_min"] == 12.0  # 6 tasks over a 30 s window
    for t in range(11, 60):
        history.sample(float(t))
    assert history.samples[-1]["per_min"] == 0.0  # those six left the window
    assert [s["ts"] for s in history.since(57.0, 10)] == [58.0, 59.0]
    assert len(history.since(0.0, 5)) == 5
