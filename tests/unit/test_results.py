"""The result pipeline's decisions, as plain values: what a batch's checks and the store's answers mean."""

from __future__ import annotations

from phage.coordinator.results import ATTESTATION_REFUSALS, FAILED_VALIDATION, Judgement, Mark, settlement
from phage.domain import TaskResult, TaskState
from phage.domain.quorum import Standing
from phage.errors import PermissionDenied, ProtocolError
from phage.store import FinishOutcome


def _ok(task_id: str, state: TaskState, *, requeued: bool = False) -> FinishOutcome:
    return FinishOutcome(accepted=True, duplicate=False, task_state=state, task_id=task_id, requeued=requeued)


def test_early_refusals_pass_through_and_only_recorded_results_consume_store_answers() -> None:
    items = [
        ("a1", TaskResult(exit_code=0)),
        ("a2", TaskResult(exit_code=0)),
        ("a3", TaskResult(exit_code=1)),
    ]
    refused = ProtocolError("output 'x' was not uploaded", field="outputs")
    s = settlement(
        items,
        [None, refused, None],
        [_ok("t1", TaskState.VERIFIED), _ok("t3", TaskState.FAILED)],
        {},
        quarantined=False,
    )
    assert s.outcomes[1] is refused
    assert s.closed == ("a1", "a3")
    assert (s.verified, s.failed) == (1, 1)
    assert s.settled == ("t1", "t3")
    assert s.events == (("t1", TaskState.VERIFIED, 0), ("t3", TaskState.FAILED, 1))
    assert s.lie is None and s.requeue == ()


def test_a_requeued_task_is_offered_again_and_not_counted_as_an_outcome() -> None:
    items = [("a1", TaskResult(exit_code=-1, error="node error"))]
    s = settlement(items, [None], [_ok("t1", TaskState.QUEUED, requeued=True)], {}, quarantined=False)
    assert s.requeue == ("t1",)
    assert (s.verified, s.failed, s.settled) == (0, 0, ())
    assert s.events == (("t1", TaskState.QUEUED, -1),)


def test_a_quorum_vote_that_leaves_its_task_open_means_other_nodes_must_answer() -> None:
    items = [("a1", TaskResult(exit_code=0)), ("a2", TaskResult(exit_code=0))]
    standings = {"a1": Standing.CHECK}
    s = settlement(
        items,
        [None, None],
        [_ok("t1", TaskState.DISPATCHED), _ok("t2", TaskState.DISPATCHED)],
        standings,
        quarantined=False,
    )
    assert s.voted == ("t1",)  # a2 had no standing: not a quorum job


def test_a_store_refusal_of_an_unchecked_result_is_a_lie_once_and_not_for_a_quarantined_node() -> None:
    items = [("never-issued", TaskResult(exit_code=0)), ("also-not-yours", TaskResult(exit_code=0))]
    refusals = [PermissionDenied("attempt never-issued is not yours"), PermissionDenied("not yours either")]
    s = settlement(items, [None, None], refusals, {}, quarantined=False)
    assert s.lie == "result refused: attempt never-issued is not yours"
    assert s.closed == () and list(s.outcomes) == refusals
    assert settlement(items, [None, None], refusals, {}, quarantined=True).lie is None


def test_duplicates_close_their_attempt_and_change_nothing_else() -> None:
    dup = FinishOutcome(accepted=True, duplicate=True, task_state=TaskState.VERIFIED, task_id="t1")
    s = settlement([("a1", TaskResult(exit_code=0))], [None], [dup], {}, quarantined=False)
    assert s.closed == ("a1",)
    assert s.events == () and s.verified == 0 and s.settled == ()


def test_a_node_is_quarantined_for_its_first_lie_and_credits_do_not_count() -> None:
    judgement = Judgement(
        (None, PermissionDenied("x"), PermissionDenied("y")),
        (Mark(None), Mark(FAILED_VALIDATION, "claimed pass failed"), Mark(ATTESTATION_REFUSALS, "later")),
    )
    assert judgement.quarantine_reason == "claimed pass failed"
    assert Judgement((None,), (Mark(None),)).quarantine_reason is None
