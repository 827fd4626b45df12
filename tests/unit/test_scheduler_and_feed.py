"""The ready queue's order and eligibility, and the feed's behaviour under a slow subscriber."""

from __future__ import annotations

from phage.coordinator.feed import EventBus
from phage.domain.generate import GenerateSpec
from phage.domain.models import QueuedTask
from phage.domain.spec import TaskSpec
from phage.scheduler import NodeView, ReadyQueue


def _t(
    tid: str,
    prio: int = 0,
    age: float = 0.0,
    kind: str = "job",
    isolation: str = "any",
    generate: dict[str, str] | None = None,
) -> QueuedTask:
    gen = GenerateSpec(prompt="p", model=generate["model"], verifier="true") if generate else None
    return QueuedTask(tid, kind, prio, age, TaskSpec(isolation=isolation, generate=gen))


NODE = NodeView("n", 10, frozenset({"bwrap"}))


def test_priority_then_age() -> None:
    q = ReadyQueue()
    q.extend([_t("old-low", 0, 1.0), _t("new-high", 5, 9.0), _t("old-high", 5, 2.0), _t("new-low", 0, 8.0)])
    assert [t.id for t in q.take(NODE, 10)] == ["old-high", "new-high", "old-low", "new-low"]
    assert len(q) == 0


def test_take_respects_the_limit_and_leaves_the_rest() -> None:
    q = ReadyQueue()
    q.extend(_t(f"t{i}", age=float(i)) for i in range(5))
    assert [t.id for t in q.take(NODE, 2)] == ["t0", "t1"]
    assert [t.id for t in q.take(NODE, 10)] == ["t2", "t3", "t4"]


def test_discarded_tasks_are_never_offered() -> None:
    q = ReadyQueue()
    q.extend([_t("a"), _t("b", age=1.0)])
    q.discard("a")
    assert [t.id for t in q.take(NODE, 10)] == ["b"]


def test_isolation_and_models_decide_eligibility() -> None:
    q = ReadyQueue()
    q.extend(
        [
            _t("needs-gvisor", age=0.0, isolation="gvisor"),
            _t("gen", age=1.0, kind="generate", generate={"model": "m1"}),
            _t("plain", age=2.0),
        ]
    )
    assert [t.id for t in q.take(NODE, 10)] == ["plain"]
    model_node = NodeView("m", 10, frozenset({"gvisor"}), frozenset({"m1"}))
    assert [t.id for t in q.take(model_node, 10)] == ["needs-gvisor", "gen"]


def test_a_node_without_any_sandbox_gets_only_noops() -> None:
    q = ReadyQueue()
    q.extend([_t("job"), _t("noop", age=1.0, kind="noop")])
    assert [t.id for t in q.take(NodeView("bare", 10, frozenset()), 10)] == ["noop"]


async def test_slow_subscriber_is_told_it_lagged() -> None:
    bus = EventBus(queue_size=3)
    async with bus.subscribe() as sub:
        for i in range(5):
            bus.task(f"t{i}", "queued")
        first = await sub.next()
        assert first["type"] == "lagged" and first["dropped"] == 2
        assert [(await sub.next())["id"] for _ in range(3)] == ["t2", "t3", "t4"]
    bus.task("after", "queued")  # no subscribers: nothing is built or kept
    assert not bus.has_subscribers
