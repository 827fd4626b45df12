"""Intake: turning checked submissions into stored, queued tasks.

A submission is refused as a whole before anything is written: a workload the pool has not
approved (when it runs approved workloads only), a generate task for a model no node serves or
could load (unless it may wait) — or, for a sharded model, one whose blocks no chain covers now
(unless it may wait) or that this coordinator cannot verify (no sandbox) — or a quorum that does
not fit its executions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from phage.coordinator.keys import Principal
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.placement import ModelPlacement
from phage.coordinator.quotas import SubmitQuotas
from phage.coordinator.replication import Replication
from phage.coordinator.requests import TaskRequest
from phage.coordinator.sharded import ShardedModels
from phage.coordinator.workloads import ApprovedWorkloads
from phage.domain import Task, TaskSpec, TaskState
from phage.domain.generate import GenerateSpec
from phage.domain.ids import new_id
from phage.errors import InvalidInput, Unavailable
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
        quotas: SubmitQuotas,
        workloads: ApprovedWorkloads,
        clock: Callable[[], float],
        credit: Callable[[Principal, Sequence[Task]], Awaitable[None]] | None = None,
        sharded: ShardedModels | None = None,
        can_verify: Callable[[], bool] = lambda: False,
    ) -> None:
        self.ledger, self.blobs = ledger, blobs
        self.credit = credit
        """Generate tasks: holds their worst case against the key's credit (PaymentRequired if short)."""
        self.placement, self.replication = placement, replication
        self.quotas = quotas
        self.workloads = workloads
        self.clock = clock
        self.sharded = sharded
        self.can_verify = can_verify
        """Whether the coordinator has a sandbox to run a sharded generate task's verifier in."""

    async def submit(self, requests: Sequence[TaskRequest], principal: Principal) -> list[Task]:
        """Store and queue tasks; nothing is written unless all are valid, approved and within quota."""
        self.workloads.check(requests)
        await self.quotas.check(requests, principal)
        now = self.clock()
        made: list[Task] = []
        for req in requests:
            if req.generate is not None:
                self._check_model(req.generate, req.wait_for_model)
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
        if self.credit is not None and any(t.spec.generate is not None for t in made):
            await self.credit(principal, made)  # a hold whose task is never written is given back
        await self.ledger.add(made)
        return made

    def _check_model(self, gen: GenerateSpec, wait: bool) -> None:
        """Refuse a generate task nothing could run now (unless it may wait)."""
        if self.sharded is not None and self.sharded.has(gen.model):
            if not self.can_verify():
                raise Unavailable(
                    f"{gen.model!r} is a sharded model: its generate tasks run their verifier in the "
                    "coordinator's sandbox, and no sandbox backend works on this coordinator",
                    field="model",
                )
            if not wait:
                self.sharded.require_ready(gen.model)  # 503 naming the blocks no live node holds
            return
        if gen.check_every_stage:
            raise InvalidInput(
                f"check_every_stage applies to sharded models; {gen.model!r} is not a declared sharded model",
                field="check_every_stage",
            )
        if not wait:
            self.placement.check_submit(gen.model)
