"""Quorum validation of untrusted job results: the pure rules, then the store applying them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from phage.domain import (
    JobManifest,
    Node,
    NodeState,
    OutputFile,
    QuorumSpec,
    Task,
    TaskKind,
    TaskResult,
    TaskSpec,
    TaskState,
)
from phage.domain.ids import new_id
from phage.domain.quorum import (
    QuorumPolicy,
    Record,
    Standing,
    Step,
    Vote,
    clean_run_needed,
    credited,
    decide,
    evidence,
    penalised,
    reputation_view,
    standing,
)
from phage.store import FinishOutcome, SqlStore

POLICY = QuorumPolicy(min_quorum=2, reliable_after=10, spot_check=0.1)
GOOD, BAD, WORSE = "a" * 64, "b" * 64, "c" * 64


def vote(node: str, digest: str = GOOD, exit_code: int = 0, at: float = 0.0, aid: str = "") -> Vote:
    return Vote(aid or f"a-{node}-{at}", node, digest, exit_code, at)


def step(votes: list[Vote], new: dict[str, Standing] | None = None, **kw: int) -> Step:
    args = {"min_quorum": 2, "open_attempts": 0, "attempts_made": len(votes), "max_attempts": 3, **kw}
    return decide("t1", votes, new=new or {}, **args)


# ---- standing: accept alone, or ask for a second opinion --------------------------------------


def test_trusted_node_always_stands_alone() -> None:
    assert standing(trusted=True, record=Record(), policy=POLICY, roll=0.0) is Standing.TRUSTED


def test_new_untrusted_node_is_checked() -> None:
    assert standing(trusted=False, record=Record(), policy=POLICY, roll=0.99) is Standing.CHECK


def test_long_clean_run_earns_single_execution_with_spot_checks() -> None:
    record = Record(validated=10, streak=10)
    assert standing(trusted=False, record=record, policy=POLICY, roll=0.5) is Standing.RELIABLE
    assert standing(trusted=False, record=record, policy=POLICY, roll=0.05) is Standing.CHECK, "spot check"
    short = Record(validated=30, streak=9)
    assert standing(trusted=False, record=short, policy=POLICY, roll=0.99) is Standing.CHECK


def test_each_strike_doubles_the_clean_run_needed() -> None:
    assert clean_run_needed(Record(), POLICY) == 10
    assert clean_run_needed(Record(disagreements=1), POLICY) == 20
    assert clean_run_needed(Record(disagreements=1, attestation_refusals=1), POLICY) == 40
    assert clean_run_needed(Record(disagreements=50), POLICY) == 160, "capped at 2**4"
    record = Record(validated=100, disagreements=1, streak=15)
    assert standing(trusted=False, record=record, policy=POLICY, roll=0.99) is Standing.CHECK


def test_adaptive_replication_off_always_checks() -> None:
    off = QuorumPolicy(min_quorum=2, reliable_after=0, spot_check=0.0)
    assert standing(trusted=False, record=Record(streak=10_000), policy=off, roll=0.99) is Standing.CHECK


def test_reputation_counters() -> None:
    rep = credited(credited({}))
    assert rep == {"validated": 2, "streak": 2}
    rep = penalised(rep, "disagreements")
    assert rep == {"validated": 2, "streak": 0, "disagreements": 1}
    assert Record.of(rep) == Record(validated=2, disagreements=1)
    view = reputation_view({"validated": 3})
    assert view == {
        "validated": 3,
        "failed_validation": 0,
        "disagreements": 0,
        "attestation_refusals": 0,
        "streak": 0,
    }


# ---- decide: counting votes -------------------------------------------------------------------


def test_trusted_result_settles_alone() -> None:
    v = vote("n1")
    s = step([v], {v.attempt_id: Standing.TRUSTED})
    assert s.verdict is not None and s.verdict.accepted == v and s.verdict.dissenting == ()


def test_checked_result_asks_for_one_more_copy() -> None:
    v = vote("n1")
    s = step([v], {v.attempt_id: Standing.CHECK}, attempts_made=1)
    assert (s.verdict, s.wanted, s.requeue, s.fail_reason) == (None, 2, True, "")


def test_a_copy_still_running_is_waited_for_not_duplicated() -> None:
    v = vote("n1")
    s = step([v], {v.attempt_id: Standing.CHECK}, open_attempts=1, attempts_made=2)
    assert (s.verdict, s.wanted, s.requeue) == (None, 2, False)


def test_two_agreeing_results_make_a_quorum() -> None:
    a, b = vote("n1", at=1), vote("n2", at=2)
    s = step([a, b], {b.attempt_id: Standing.CHECK})
    v = s.verdict
    assert v is not None and v.accepted == a and v.majority == ("n1", "n2") and v.dissenting == ()
    assert v.standing is Standing.CHECK


def test_disagreement_dispatches_a_tie_breaker_then_the_majority_wins() -> None:
    a, b = vote("honest", at=1), vote("liar", BAD, at=2)
    s = step([a, b], {b.attempt_id: Standing.CHECK}, attempts_made=2)
    assert (s.verdict, s.wanted, s.requeue) == (None, 3, True)
    c = vote("honest2", at=3)
    v = step([a, b, c], {c.attempt_id: Standing.CHECK}).verdict
    assert v is not None and v.accepted == a and [d.node_id for d in v.dissenting] == ["liar"]
    why = v.evidence(v.dissenting[0])
    assert "t1" in why and BAD[:16] in why and GOOD[:16] in why and "honest" in why


def test_no_quorum_within_max_attempts_fails_with_who_produced_what() -> None:
    votes = [vote("n1", GOOD, at=1), vote("n2", BAD, at=2), vote("n3", WORSE, at=3)]
    s = step(votes, {votes[2].attempt_id: Standing.CHECK})
    assert s.verdict is None and not s.requeue
    reason = s.fail_reason
    assert "no 2 results agreed within 3 executions" in reason
    for v in votes:
        assert v.node_id in reason and v.output_sha256[:16] in reason


def test_quorum_out_of_reach_fails_early_even_with_budget_left() -> None:
    votes = [vote("n1", GOOD, at=1), vote("n2", BAD, at=2)]
    s = step(votes, min_quorum=3, attempts_made=4, max_attempts=4)
    assert "no 3 results agreed" in s.fail_reason
    s = step(votes, min_quorum=3, attempts_made=2, max_attempts=4)
    assert (s.wanted, s.requeue) == (4, True), "needs 2 more agreeing; 2 executions are left"


def test_budget_left_but_less_than_needed_asks_for_what_fits() -> None:
    votes = [vote("n1", GOOD, at=1)]
    s = step(votes, min_quorum=3, attempts_made=2, max_attempts=3, open_attempts=1)
    assert (s.wanted, s.requeue) == (3, True)


def test_exit_code_is_part_of_the_agreement() -> None:
    a, b = vote("n1", GOOD, 0, at=1), vote("n2", GOOD, 1, at=2)
    assert step([a, b], attempts_made=2).verdict is None
    c = vote("n3", GOOD, 1, at=3)
    v = step([a, b, c]).verdict
    assert v is not None and v.accepted == b and v.accepted.exit_code == 1, "an agreed failure is the answer"


def test_one_node_voting_twice_counts_once() -> None:
    a, b = vote("n1", at=1), vote("n1", at=2)
    s = step([a, b], attempts_made=2)
    assert s.verdict is None and s.wanted == 3


def test_reliable_result_stands_alone_only_if_nothing_disagrees() -> None:
    r = vote("veteran", at=2)
    alone = step([r], {r.attempt_id: Standing.RELIABLE}).verdict
    assert alone is not None and alone.accepted == r and alone.standing is Standing.RELIABLE
    earlier = vote("newcomer", BAD, at=1)
    s = step([earlier, r], {r.attempt_id: Standing.RELIABLE}, attempts_made=2)
    assert s.verdict is None and s.requeue, "a disagreement needs a real quorum"


def test_trusted_result_overrules_an_untrusted_disagreement() -> None:
    u, t = vote("untrusted", BAD, at=1), vote("trusted", GOOD, at=2)
    v = step([u, t], {t.attempt_id: Standing.TRUSTED}).verdict
    assert v is not None and v.accepted == t and [d.node_id for d in v.dissenting] == ["untrusted"]


def test_largest_group_wins_ties_to_the_first_to_reach_it() -> None:
    votes = [vote("n1", BAD, at=1), vote("n2", GOOD, at=2), vote("n3", GOOD, at=3), vote("n4", BAD, at=4)]
    v = step(votes, min_quorum=2, attempts_made=4, max_attempts=5).verdict
    assert v is not None and v.accepted.node_id == "n2", "both groups reached 2; this one first"


def test_evidence_lists_every_vote_in_order() -> None:
    text = evidence([vote("n2", BAD, at=2), vote("n1", GOOD, at=1)])
    assert text.index("n1") < text.index("n2") and "exit 0" in text


# ---- the store applies the rules in the result's transaction ----------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(database_url)
    await s.open()
    try:
        for name in ("n1", "n2", "n3"):
            await s.upsert_node(
                Node(id=name, name=name, state=NodeState.ONLINE, registered_at=1, last_heartbeat=1)
            )
        yield s
    finally:
        await s.close()


def quorum_job(max_attempts: int = 3, replicas: int = 1) -> Task:
    return Task(
        id=new_id("t"),
        kind=TaskKind.JOB,
        state=TaskState.QUEUED,
        spec=TaskSpec(manifest=JobManifest("main.py"), quorum=QuorumSpec(min_quorum=2)),
        max_attempts=max_attempts,
        created_at=1.0,
        updated_at=1.0,
        replicas=replicas,
        min_quorum=2,
    )


def result(digest: str) -> TaskResult:
    return TaskResult(exit_code=0, outputs=[OutputFile("out.txt", digest, 3)], output_sha256=digest)


async def run(
    store: SqlStore, task: Task, node: str, digest: str, standing: Standing = Standing.CHECK
) -> FinishOutcome:
    (att,) = await store.claim(node, [task.id], 10.0, 30.0)
    (out,) = await store.finish_many(node, [(att.id, result(digest))], 11.0, standing={att.id: standing})
    assert isinstance(out, FinishOutcome)
    return out


async def test_store_asks_for_a_second_opinion_then_verifies_and_credits(store: SqlStore) -> None:
    task = quorum_job()
    await store.add_tasks([task])
    first = await run(store, task, "n1", GOOD)
    assert first.task_state is TaskState.QUEUED and first.requeued and first.quorum is None
    got = await store.get_task(task.id)
    assert got is not None and got.replicas == 2 and [q.id for q in await store.queued_tasks()] == [task.id]
    second = await run(store, task, "n2", GOOD)
    assert second.task_state is TaskState.VERIFIED and second.quorum is not None
    assert set(second.quorum.reputations) == {"n1", "n2"}
    for name in ("n1", "n2"):
        node = await store.get_node(name)
        assert node is not None and node.reputation == {"validated": 1, "streak": 1}
    done = await store.get_task(task.id)
    assert done is not None and done.result is not None and done.result.output_sha256 == GOOD


async def test_store_breaks_a_disagreement_and_penalises_the_dissenter(store: SqlStore) -> None:
    task = quorum_job()
    await store.add_tasks([task])
    await run(store, task, "n1", GOOD)
    second = await run(store, task, "n2", BAD)
    assert second.task_state is TaskState.QUEUED and second.requeued
    third = await run(store, task, "n3", GOOD)
    assert third.task_state is TaskState.VERIFIED and third.quorum is not None
    assert [d.node_id for d in third.quorum.verdict.dissenting] == ["n2"]
    liar = await store.get_node("n2")
    assert liar is not None and liar.reputation == {"disagreements": 1, "streak": 0}
    done = await store.get_task(task.id)
    assert done is not None and done.result is not None and done.result.output_sha256 == GOOD


async def test_store_fails_a_task_that_never_reaches_a_quorum(store: SqlStore) -> None:
    task = quorum_job()
    await store.add_tasks([task])
    for node, digest in (("n1", GOOD), ("n2", BAD), ("n3", WORSE)):
        last = await run(store, task, node, digest)
    assert last.task_state is TaskState.FAILED and last.quorum is None
    failed = await store.get_task(task.id)
    assert failed is not None and "no 2 results agreed" in failed.error
    assert "node n2" in failed.error and BAD[:16] in failed.error
    assert await store.queued_tasks() == []


async def test_store_trusted_result_settles_alone_with_no_credit(store: SqlStore) -> None:
    task = quorum_job()
    await store.add_tasks([task])
    out = await run(store, task, "n1", GOOD, Standing.TRUSTED)
    assert out.task_state is TaskState.VERIFIED and out.quorum is not None and out.quorum.reputations == {}
    got = await store.get_task(task.id)
    assert got is not None and got.attempts_made == 1


async def test_store_lost_copy_is_replaced_and_max_attempts_caps_all_executions(store: SqlStore) -> None:
    task = quorum_job(max_attempts=3)
    await store.add_tasks([task])
    await run(store, task, "n1", GOOD)
    (lost,) = await store.claim("n2", [task.id], 12.0, 30.0)
    (outcome,) = await store.fail_lost([lost.id], "node died", 13.0)
    assert outcome.requeued and outcome.task_state is TaskState.QUEUED
    (lost2,) = await store.claim("n3", [task.id], 14.0, 30.0)
    assert await store.claim("n2", [task.id], 14.0, 30.0) == [], "2 copies wanted, 1 open, 1 voted"
    (outcome,) = await store.fail_lost([lost2.id], "node died", 15.0)
    assert outcome.task_state is TaskState.FAILED, "3 executions made: the cap, not 3 × replicas"
    failed = await store.get_task(task.id)
    assert failed is not None and "no 2 results agreed within 3 executions" in failed.error
