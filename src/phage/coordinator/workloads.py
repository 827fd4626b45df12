"""Approved workloads: a pool option under which only code an admin has approved may run.

With ``approved_workloads_only`` on, a task whose workload digest (:mod:`phage.domain.workloads`)
is not on the list is refused at submit (403, naming the digest and how to approve it), before
anything is stored or queued. The list lives in ``data_dir/approved-workloads.json``, written
atomically; ``phage backup`` carries it with the CA. Approving is an admin act over the HTTP API
(``phage workloads approve``); the list can be managed with the option off, so a pool can be
switched over once its usual workloads are approved.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from phage.coordinator.requests import TaskRequest
from phage.domain.workloads import is_digest, workload_digest
from phage.errors import InvalidInput, NotFound, PermissionDenied

FILE_NAME = "approved-workloads.json"


@dataclass(frozen=True)
class Approval:
    """One approved workload."""

    digest: str
    name: str
    approved_at: float
    approved_by: str


def request_digest(req: TaskRequest) -> str | None:
    """The workload digest of a validated task request."""
    workspace = hashlib.sha256(req.workspace).hexdigest() if req.workspace is not None else None
    return workload_digest(
        req.kind.value,
        workspace_sha256=workspace,
        entrypoint=req.manifest.entrypoint if req.manifest else None,
        interpreter=req.manifest.interpreter if req.manifest else None,
        verifier=req.generate.verifier if req.generate else None,
    )


class ApprovedWorkloads:
    """The approved list, and the check submit makes against it."""

    def __init__(self, path: Path, *, enforced: bool) -> None:
        self.path = path
        self.enforced = enforced
        self._items: dict[str, Approval] = {}
        if path.is_file():
            for item in json.loads(path.read_text()):
                approval = Approval(**item)
                self._items[approval.digest] = approval

    def list(self) -> list[Approval]:
        """Every approval, oldest first."""
        return sorted(self._items.values(), key=lambda a: a.approved_at)

    def check(self, requests: Sequence[TaskRequest]) -> None:
        """Refuse the batch if the option is on and any task's workload is not approved."""
        if not self.enforced:
            return
        for i, req in enumerate(requests):
            digest = request_digest(req)
            if digest is not None and digest not in self._items:
                where = f"tasks[{i}]: " if len(requests) > 1 else ""
                raise PermissionDenied(
                    f"{where}this pool runs approved workloads only, and workload {digest} is not approved; "
                    f"an admin approves it with `phage workloads approve {digest}`",
                    field="workload",
                )

    def approve(self, digest: str, name: str, by: str) -> Approval:
        """Add (or rename) an approval."""
        if not is_digest(digest):
            raise InvalidInput("digest must be sha256: and 64 lowercase hex digits", field="digest")
        if len(name) > 200:
            raise InvalidInput("name must be at most 200 characters", field="name")
        approval = Approval(digest, name, time.time(), by)
        self._items[digest] = approval
        self._save()
        return approval

    def revoke(self, digest: str) -> None:
        """Remove an approval; tasks already queued keep running."""
        if self._items.pop(digest, None) is None:
            raise NotFound(f"workload {digest} is not approved", field="digest")
        self._save()

    def _save(self) -> None:
        data = json.dumps([asdict(a) for a in self.list()], indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".approved-")
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.replace(tmp, self.path)
