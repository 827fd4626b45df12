"""Intake: turning checked submissions into stored, queued tasks.

A submission is refused as a whole before anything is written: a workload the pool has not
approved (when it runs approved workloads only), a generate task for a model no node serves or
could load (unless it may wait), or a quorum that does not fit its executions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from phage.coordinator.keys import Principal
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.placement import ModelPlacement
from phage.coordinator.replication import Replication
from phage.coordinator.requests import TaskRequest
from phage.coordinator.workloads import ApprovedWorkloads
from phage.domain import Task, TaskSpec, TaskState
from phage.domain.ids import new_id
from phage.logs import REQUEST_ID
from phage.store.blobs import BlobStore


class Intake:
    """Builds tasks from requests and hands them to the ledger."""

    def __init__(
        self,
        ledger: TaskLedger,
        blobs: BlobStore,
        placement: ModelPlacement,
        replication: Replication,
        workloads: ApprovedWorkloads,
        clock: Callable[[], float],
    ) -> None:
        self.ledger, self.blobs = ledger, blobs
        self.placement, self.replication = placement, replication
        self.workloads = workloads
        self.clock = clock

    async def submit(self, requests: Sequence[TaskRequest], principal: Principal) -> list[Task]:
        """Store and queue tasks; nothing is written unless all of them are valid."""
        self.workloads.check(requests)
        now = self.clock()
        made: list[Task] = []
        for req in requests:
            if req.generate is not None and not req.wait_for_model:
                self.placement.check_submit(req.generate.model)
            copies, min_quorum, quorum = self.replication.plan(req)
            workspace = self.blobs.put(req.workspace) if req.workspace is not None else ""
            spec = TaskSpec(
                isolation=req.isolation,
                manifest=req.manifest,
                generate=req.generate,
                quorum=quorum,
                workspace=workspace,
                workspace_size=len(req.workspace) if req.workspace is not None else 0,
                request_id=REQUEST_ID.get() or "",
            )
            replicas = copies if quorum is not None else spec.best_of
            for _ in range(req.count):
                made.append(
                    Task(
                        id=new_id("t"),
                        kind=req.kind,
                        state=TaskState.QUEUED,
                        spec=spec,
                        priority=req.priority,
                        max_attempts=req.max_attempts,
                        created_at=now,
                        updated_at=now,
                        owner=principal.key_id,
                        labels=req.labels,
                        replicas=replicas,
                        min_quorum=min_quorum,
                    )
                )
        await self.ledger.add(made)
        return made
