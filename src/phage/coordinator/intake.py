"""Intake: turning checked submissions into stored, queued tasks.

A submission is refused as a whole before anything is written: a generate task for a model no
node serves or could load (unless it may wait), or a quorum that does not fit its executions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from phage.coordinator.keys import Principal
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.placement import ModelPlacement
from phage.coordinator.replication import Replication
from phage.coordinator.requests import TaskRequest
from phage.domain import Task, TaskState
from phage.domain.ids import new_id
from phage.store.blobs import BlobStore


class Intake:
    """Builds tasks from requests and hands them to the ledger."""

    def __init__(
        self,
        ledger: TaskLedger,
        blobs: BlobStore,
        placement: ModelPlacement,
        replication: Replication,
        clock: Callable[[], float],
    ) -> None:
        self.ledger, self.blobs = ledger, blobs
        self.placement, self.replication = placement, replication
        self.clock = clock

    async def submit(self, requests: Sequence[TaskRequest], principal: Principal) -> list[Task]:
        """Store and queue tasks; nothing is written unless all of them are valid."""
        now = self.clock()
        made: list[Task] = []
        for req in requests:
            spec: dict[str, Any] = {"isolation": req.isolation}
            replicas = 1
            if req.manifest is not None:
                spec["manifest"] = req.manifest.to_dict()
            if req.generate is not None:
                if not req.wait_for_model:
                    self.placement.check_submit(req.generate.model)
                spec["generate"] = req.generate.to_dict()
                replicas = spec["replicas"] = req.generate.n
            copies, min_quorum, quorum = self.replication.plan(req)
            if quorum is not None:
                replicas, spec["quorum"] = copies, quorum
            if req.workspace is not None:
                spec["workspace"] = self.blobs.put(req.workspace)
                spec["workspace_size"] = len(req.workspace)
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
