"""The sandrun-compatible pool API: sandrun's clients and documented ``curl`` commands work unchanged.

=============================  ==============================================================
``POST /submit``               multipart ``files`` (the project ``.tar.gz``) + ``manifest`` (JSON)
                               → ``{"job_id", "status": "queued"}``
``GET /status/{job_id}``       ``job_id``, ``pool_status``, ``worker_id``, ``worker_status``,
                               ``submitted_at``, ``completed_at``
``GET /outputs/{job_id}/{p}``  the output file's bytes
``GET /pool``                  ``total_workers``, ``healthy_workers``, ``total_jobs``,
                               ``queued_jobs``, ``workers[]``
=============================  ==============================================================

A job here is an ordinary phage job: the same validation as ``POST /api/tasks`` (same 4xx errors,
naming the field), the same queue, attempts and sandboxes; ``job_id`` is the phage task id, so
``/api/tasks/{job_id}`` shows the full record. A manifest without ``outputs`` collects every file
the job leaves in its workspace, as sandrun's workers do (their default is ``["*"]``, everything).

Auth: sandrun's commands carry no API key. phage still requires one here (``Authorization:
Bearer …``, any role; a user sees only its own jobs) unless the coordinator is started with
``--pool-api-open`` (``PHAGE_POOL_API_OPEN=1``), which serves callers without a key as one
shared anonymous user — for a private network only, since anyone who reaches the HTTP port can
then submit jobs. A key that is sent is always checked.

Status vocabulary: phage's task states map onto sandrun's ``queued | dispatched | running |
completed | failed``; a cancelled job reads ``failed`` (sandrun has no cancel), and
``worker_status.status`` and ``state`` give phage's own word.
"""
# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.datastructures import UploadFile

from phage.coordinator.bodies import parse_json
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.pool import LiveNode
from phage.coordinator.requests import parse_task_request
from phage.coordinator.uploads import multipart_form, read_archive
from phage.domain import Attempt, AttemptState, NodeState, Task, TaskState
from phage.domain.manifest import safe_relative_path
from phage.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthenticated

TAG = "sandrun-compatible pool API"
ANONYMOUS = Principal("pool-api", "pool API caller without a key", "user")
"""Who a keyless caller is when ``pool_api_open`` is set: one shared user."""
DEFAULT_OUTPUTS = ["**/*"]
"""sandrun's workers collect everything when a manifest names no outputs."""

POOL_STATUS = {
    TaskState.SUBMITTED: "queued",
    TaskState.QUEUED: "queued",
    TaskState.DISPATCHED: "dispatched",
    TaskState.RUNNING: "running",
    TaskState.VERIFIED: "completed",
    TaskState.FAILED: "failed",
    TaskState.CANCELLED: "failed",
}
WORKER_STATUS = {
    AttemptState.DISPATCHED: "queued",
    AttemptState.RUNNING: "running",
    AttemptState.SUCCEEDED: "completed",
    AttemptState.FAILED: "failed",
    AttemptState.LOST: "failed",
    AttemptState.CANCELLED: "cancelled",
}


def job_status(task: Task, attempts: list[Attempt]) -> dict[str, Any]:
    """A task in sandrun's ``/status`` shape, plus phage's own state and output paths."""
    kept = task.result.attempt_id if task.result else ""
    attempt = next((a for a in attempts if a.id == kept), attempts[-1] if attempts else None)
    worker_status: dict[str, Any] | None = None
    if attempt is not None:
        r = attempt.result
        worker_status = {
            "job_id": attempt.id,
            "status": WORKER_STATUS.get(attempt.state, attempt.state.value),
            "state": attempt.state.value,
            "exit_code": attempt.exit_code,
            "error": attempt.error,
            "execution_metadata": {"wall_time_s": r.wall_time_s, "sandbox": r.sandbox} if r else {},
        }
    return {
        "job_id": task.id,
        "pool_status": POOL_STATUS[task.state],
        "worker_id": attempt.node_id if attempt is not None else None,
        "worker_status": worker_status,
        "submitted_at": task.created_at,
        "completed_at": task.finished_at if task.state.terminal else None,
        "state": task.state.value,
        "outputs": [o.path for o in task.result.outputs] if task.result else [],
    }


def worker_public(live: LiveNode | None, endpoint: str, worker_id: str) -> dict[str, Any]:
    """A node in sandrun's ``/pool`` ``workers[]`` shape (an allowlisted worker not yet joined: None)."""
    if live is None:
        return {
            "worker_id": worker_id,
            "endpoint": endpoint,
            "is_healthy": False,
            "active_jobs": 0,
            "max_concurrent_jobs": None,
            "last_health_check": None,
            "state": "not joined",
        }
    n = live.node
    return {
        "worker_id": n.id,
        "endpoint": endpoint,
        "is_healthy": n.state is NodeState.ONLINE and not n.quarantined,
        "active_jobs": len(live.attempts),
        "max_concurrent_jobs": min(n.max_concurrency, n.max_jobs or n.max_concurrency),
        "last_health_check": live.last_seen or n.last_heartbeat,
        "name": n.name,
        "state": n.state.value,
        "trusted": n.trusted,
        "draining": n.draining,
    }


def install_pool_api(app: FastAPI, coordinator: Coordinator) -> None:
    """Add sandrun's pool routes to the coordinator's HTTP app."""
    c = coordinator
    s = c.settings

    async def caller(request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None and s.pool_api_open:
            return ANONYMOUS
        try:
            return await c.keys.authenticate(header)
        except Unauthenticated as exc:
            if header is None:
                raise Unauthenticated(
                    f"{exc.message} (or start the coordinator with --pool-api-open to serve "
                    "the sandrun-compatible pool API without keys)",
                    field="Authorization",
                ) from None
            raise

    async def visible(job_id: str, who: Principal) -> tuple[Task, list[Attempt]]:
        try:
            task, attempts = await c.ledger.get(job_id)
        except NotFound:
            task, attempts = None, []
        if task is None or (not who.is_admin and task.owner != who.key_id):
            raise NotFound(f"no job {job_id!r}", field="job_id")
        return task, attempts

    async def read_form(request: Request) -> tuple[Any, bytes]:
        """The ``manifest`` (parsed JSON) and ``files`` (archive bytes) fields, within the limits."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidInput("POST /submit takes multipart/form-data: 'files' and 'manifest'", field="body")
        async with multipart_form(
            request,
            max_request_bytes=s.max_request_bytes,
            max_workspace_bytes=s.max_workspace_bytes,
            archive_field="files",
            json_field="manifest",
        ) as form:
            raw = form.get("manifest")
            if raw is None:
                raise InvalidInput("multipart upload needs a 'manifest' field (job JSON)", field="manifest")
            if isinstance(raw, UploadFile):
                text = await raw.read(s.max_request_bytes + 1)
                if len(text) > s.max_request_bytes:
                    raise PayloadTooLarge(
                        f"manifest exceeds the limit of {s.max_request_bytes} bytes", field="manifest"
                    )
            else:
                text = raw.encode()
            manifest = parse_json(text, "manifest")
            upload = form.get("files")
            if upload is None:
                raise InvalidInput("multipart upload needs a 'files' field (a .tar.gz)", field="files")
            hint = " (curl -F files=@project.tar.gz)"
            return manifest, await read_archive(upload, field="files", limit=s.max_workspace_bytes, hint=hint)

    @app.post("/submit", tags=[TAG])
    async def pool_submit(request: Request, who: Principal = Depends(caller)) -> dict[str, Any]:
        """Submit a job: a project tarball (``files``) and its manifest."""
        manifest, data = await read_form(request)
        if isinstance(manifest, dict) and "outputs" not in manifest:
            manifest = {**manifest, "outputs": DEFAULT_OUTPUTS}
        try:
            req = parse_task_request(
                {"kind": "job", "manifest": manifest},
                workspace=data,
                max_workspace_bytes=s.max_workspace_bytes,
                default_max_attempts=s.default_max_attempts,
            )
        except InvalidInput as exc:
            if exc.field != "workspace":
                raise
            # the same check as POST /api/tasks, named after the field this API's clients sent
            raise type(exc)(exc.message, field="files") from None
        (task,) = await c.intake.submit([req], who)
        return {"job_id": task.id, "status": POOL_STATUS[task.state]}

    @app.get("/status/{job_id}", tags=[TAG])
    async def pool_status(job_id: str, who: Principal = Depends(caller)) -> dict[str, Any]:
        """A job's state in sandrun's words, with the worker that ran it."""
        return job_status(*await visible(job_id, who))

    @app.get("/outputs/{job_id}/{path:path}", tags=[TAG])
    async def pool_output(job_id: str, path: str, who: Principal = Depends(caller)) -> Response:
        """One output file's bytes."""
        norm = safe_relative_path(path, "path", allow_glob=True)
        task, _ = await visible(job_id, who)
        for out in task.result.outputs if task.result else []:
            if out.path == norm:
                return FileResponse(
                    c.blobs.path(out.sha256),
                    media_type="application/octet-stream",
                    headers={"X-Content-SHA256": out.sha256},
                )
        raise NotFound(f"job {job_id} ({task.state.value}) has no output {norm!r}", field="path")

    @app.get("/pool", tags=[TAG])
    async def pool_summary(who: Principal = Depends(caller)) -> dict[str, Any]:
        """Workers (every node the pool admits, plus allowlisted ones not yet joined) and the queue."""
        counts = await c.ledger.counts()
        listed = c.admission.workers.workers if c.admission.mode == "allowlist" else {}
        workers = []
        for live in c.nodes.all():
            if not live.node.state.shut_out:
                entry = listed.get(live.node.id)
                workers.append(worker_public(live, entry.endpoint if entry else "", live.node.id))
        joined = {w["worker_id"] for w in workers}
        workers += [worker_public(None, e.endpoint, wid) for wid, e in listed.items() if wid not in joined]
        return {
            "total_workers": len(workers),
            "healthy_workers": sum(1 for w in workers if w["is_healthy"]),
            "total_jobs": sum(counts.values()),
            "queued_jobs": counts.get(TaskState.QUEUED.value, 0) + counts.get(TaskState.SUBMITTED.value, 0),
            "workers": workers,
        }
