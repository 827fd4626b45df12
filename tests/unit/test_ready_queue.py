"""The scheduler's ReadyQueue: priority then age, discard, eligibility, the take limit."""

from __future__ import annotations

from typing import Any

from phage.domain.generate import GenerateSpec
from phage.domain.models import QueuedTask
from phage.domain.spec import TaskSpec
from phage.scheduler import NodeView, ReadyQueue, eligible, order_key

BWRAP = NodeView("n-bwrap", free_slots=8, sandboxes=frozenset({"bwrap"}))
ALL = NodeView("n-all", free_slots=8, sandboxes=frozenset({"bwrap", "gvisor", "none"}))
BARE = NodeView("n-bare", free_slots=8)  # no sandbox at all


def qt(
    task_id: str, priority: int = 0, created_at: float = 0.0, kind: str = "job", **spec: Any
) -> QueuedTask:
    return QueuedTask(task_id, kind, priority, created_at, _spec(**spec))


def _spec(isolation: str = "any", generate: dict[str, Any] | None = None) -> TaskSpec:
    """A spec with just what placement reads: isolation, and a generate task's model."""
    gen = GenerateSpec(prompt="p", model=generate["model"], verifier="true") if generate else None
    return TaskSpec(isolation=isolation, generate=gen)


def ids(tasks: list[QueuedTask]) -> list[str]:
    return [t.id for t in tasks]


def test_priority_first_then_oldest_first() -> None:
    q = ReadyQueue()
    q.extend(
        [
            qt("low-old", priority=0, created_at=1.0),
            qt("high-new", priority=5, created_at=9.0),
            qt("low-new", priority=0, created_at=5.0),
            qt("high-old", priority=5, created_at=2.0),
            qt("negative", priority=-3, created_at=0.0),
            qt("mid", priority=1, created_at=10.0),
        ]
    )
    assert len(q) == 6
    assert ids(q.take(ALL, limit=10)) == ["high-old", "high-new", "mid", "low-old", "low-new", "negative"]
    assert len(q) == 0
    assert q.take(ALL, limit=10) == []


def test_ties_are_broken_by_id_deterministically() -> None:
    q = ReadyQueue()
    q.extend([qt("t-b", created_at=1.0), qt("t-c", created_at=1.0), qt("t-a", created_at=1.0)])
    assert ids(q.take(ALL, limit=3)) == ["t-a", "t-b", "t-c"]
    assert order_key(qt("x", priority=2, created_at=3.0)) < order_key(qt("x", priority=1, created_at=0.0))


def test_take_respects_the_limit_and_keeps_the_rest_in_order() -> None:
    q = ReadyQueue()
    q.extend(qt(f"t{i}", created_at=float(i)) for i in range(5))
    assert ids(q.take(ALL, limit=2)) == ["t0", "t1"]
    assert len(q) == 3
    assert ids(q.take(ALL, limit=0)) == []
    assert len(q) == 3
    assert ids(q.take(ALL, limit=1)) == ["t2"]
    assert ids(q.take(ALL, limit=99)) == ["t3", "t4"]


def test_discard_removes_a_task_lazily() -> None:
    q = ReadyQueue()
    q.extend([qt("a", created_at=1.0), qt("b", created_at=2.0), qt("c", created_at=3.0)])
    q.discard("b")
    q.discard("never-queued")  # harmless
    assert len(q) == 2
    assert sorted(ids(q.tasks())) == ["a", "c"]
    assert ids(q.take(ALL, limit=10)) == ["a", "c"]


def test_a_discarded_task_can_be_queued_again() -> None:
    q = ReadyQueue()
    q.push(qt("a", priority=0, created_at=1.0))
    q.push(qt("b", priority=0, created_at=2.0))
    q.discard("a")
    q.push(qt("a", priority=9, created_at=1.0))  # requeued, now urgent
    assert ids(q.take(ALL, limit=10)) == ["a", "b"]
    assert len(q) == 0


def test_re_pushing_replaces_the_old_entry() -> None:
    q = ReadyQueue()
    q.push(qt("a", priority=0, created_at=1.0))
    q.push(qt("b", priority=1, created_at=2.0))
    q.push(qt("a", priority=5, created_at=1.0))
    assert len(q) == 2
    assert ids(q.take(ALL, limit=10)) == ["a", "b"]  # once, with its new priority


def test_isolation_decides_who_may_take_a_task() -> None:
    q = ReadyQueue()
    q.extend(
        [
            qt("needs-gvisor", created_at=1.0, isolation="gvisor"),
            qt("needs-bwrap", created_at=2.0, isolation="bwrap"),
            qt("any", created_at=3.0),
            qt("noop", created_at=4.0, kind="noop"),
        ]
    )
    # a node with no sandbox takes only noop work; the rest stays queued, in order
    assert ids(q.take(BARE, limit=10)) == ["noop"]
    assert len(q) == 3
    # a bwrap-only node skips the gvisor task but takes what it can
    assert ids(q.take(BWRAP, limit=10)) == ["needs-bwrap", "any"]
    assert ids(q.tasks()) == ["needs-gvisor"]
    assert ids(q.take(ALL, limit=10)) == ["needs-gvisor"]


def test_ineligible_work_does_not_block_eligible_work_behind_it() -> None:
    q = ReadyQueue()
    q.extend(qt(f"g{i}", priority=9, created_at=float(i), isolation="gvisor") for i in range(50))
    q.push(qt("late-bwrap", priority=0, created_at=100.0))
    assert ids(q.take(BWRAP, limit=1)) == ["late-bwrap"]
    assert len(q) == 50
    assert ids(q.take(ALL, limit=3)) == ["g0", "g1", "g2"]  # skipped entries kept their order


def test_allow_filters_further() -> None:
    q = ReadyQueue()
    q.extend([qt("tried-here", created_at=1.0), qt("fresh", created_at=2.0)])
    assert ids(q.take(ALL, limit=10, allow=lambda t: t.id != "tried-here")) == ["fresh"]
    assert ids(q.tasks()) == ["tried-here"]


def test_generate_work_needs_the_model() -> None:
    task = qt("gen", kind="generate", generate={"model": "qwen"})
    with_model = NodeView("m", 1, frozenset({"bwrap"}), frozenset({"qwen"}))
    assert eligible(task, with_model)
    assert not eligible(task, BWRAP)
    assert not eligible(task, NodeView("m", 1, frozenset(), frozenset({"qwen"})))  # still needs a sandbox


def test_depth_by_kind() -> None:
    q = ReadyQueue()
    q.extend([qt("a"), qt("b", kind="noop"), qt("c", kind="noop")])
    q.discard("a")
    assert q.depth_by_kind() == {"noop": 2}


def test_depth_by_model_follows_push_discard_and_take() -> None:
    q = ReadyQueue()
    q.extend([qt(f"g{i}", kind="generate", generate={"model": "a" if i < 3 else "b"}) for i in range(5)])
    q.push(qt("g0", kind="generate", generate={"model": "a"}))  # re-added: counted once
    q.push(qt("j", kind="job"))
    assert q.depth_by_model() == {"a": 3, "b": 2}
    q.discard("g3")
    serving_a = NodeView("n", free_slots=8, sandboxes=frozenset({"bwrap"}), models=frozenset({"a"}))
    assert len(q.take(serving_a, 2)) == 2
    assert q.depth_by_model() == {"a": 1, "b": 1}
