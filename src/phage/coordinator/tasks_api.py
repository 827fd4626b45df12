"""Task routes: submit (JSON, batches, multipart with a workspace), list, show, cancel, download.

``/api/tasks`` takes one task (a JSON object), many (``{"tasks": [...]}``), or a multipart form
with a workspace archive. A caller sees only its own key's tasks; admins see every task.
"""
# No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.

import dataclasses
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response

from phage.coordinator.bodies import parse_json, read_body
from phage.coordinator.core import Coordinator
from phage.coordinator.keys import Principal
from phage.coordinator.requests import TaskRequest, parse_task_request
from phage.coordinator.uploads import multipart_form, read_archive
from phage.coordinator.views import task_public
from phage.domain import Attempt, Task, TaskState
from phage.domain.manifest import safe_relative_path
from phage.errors import InvalidInput, NotFound
from phage.store import PageCursor


def install_tasks(
    app: FastAPI, c: Coordinator, principal: Callable[[Request], Coroutine[Any, Any, Principal]]
) -> None:
    """Add the task routes."""
    s = c.settings
    Caller = Annotated[Principal, Depends(principal)]

    async def visible_task(task_id: str, who: Principal) -> tuple[Task, list[Attempt]]:
        task, attempts = await c.ledger.get(task_id)
        if not who.is_admin and task.owner != who.key_id:
            raise NotFound(f"no task {task_id!r}", field="id")
        return task, attempts

    @app.post("/api/tasks", status_code=201, tags=["tasks"])
    async def submit(request: Request, who: Caller) -> dict[str, Any]:
        """Submit one task (a JSON object), many (``{"tasks": [...]}``), or multipart with a workspace.

        Multipart fields: ``task`` (JSON) or ``manifest`` (JSON), and ``workspace``
        (a ``.tar.gz``; ``files``, its name in the sandrun-compatible pool API, is accepted too).
        """
        ctype = request.headers.get("content-type", "")
        reqs: list[TaskRequest]
        if ctype.startswith("multipart/form-data"):
            reqs = [await _multipart(request)]
        else:
            body = parse_json(await read_body(request, s.max_request_bytes))
            items = body["tasks"] if isinstance(body, dict) and "tasks" in body else [body]
            if not isinstance(items, list) or not items:
                raise InvalidInput("tasks must be a non-empty list", field="tasks")
            if len(items) > s.max_batch_submit:
                raise InvalidInput(f"at most {s.max_batch_submit} tasks per request", field="tasks")
            reqs = []
            for i, item in enumerate(items):
                try:
                    reqs.append(_parse(item))
                except InvalidInput as exc:
                    if len(items) > 1:
                        raise type(exc)(
                            f"tasks[{i}]: {exc.message}", field=f"tasks[{i}].{exc.field}"
                        ) from None
                    raise
        if sum(r.count for r in reqs) > s.max_batch_submit:
            raise InvalidInput(f"at most {s.max_batch_submit} tasks per request", field="count")
        made = await c.intake.submit(reqs, who)
        if len(made) == 1:
            return task_public(made[0])
        return {"tasks": [{"id": t.id, "state": t.state.value} for t in made]}

    def _parse(item: Any, workspace: bytes | None = None) -> TaskRequest:
        return parse_task_request(
            item,
            workspace=workspace,
            max_workspace_bytes=s.max_workspace_bytes,
            default_max_attempts=s.default_max_attempts,
            max_count=s.max_batch_submit,
        )

    async def _multipart(request: Request) -> TaskRequest:
        async with multipart_form(
            request,
            max_request_bytes=s.max_request_bytes,
            max_workspace_bytes=s.max_workspace_bytes,
            archive_field="workspace",
            json_field="task",
        ) as form:
            spec: Any
            if "task" in form:
                spec = parse_json(str(form["task"]).encode(), "task")
            elif "manifest" in form:
                spec = {"kind": "job", "manifest": parse_json(str(form["manifest"]).encode(), "manifest")}
            else:
                raise InvalidInput("multipart upload needs a 'task' or 'manifest' field", field="manifest")
            upload = form.get("workspace") or form.get("files")
            data: bytes | None = None
            if upload is not None:
                data = await read_archive(upload, field="workspace", limit=s.max_workspace_bytes, hint="")
            return _parse(spec, data)

    @app.get("/api/tasks", tags=["tasks"])
    async def list_tasks(
        who: Caller,
        state: Annotated[TaskState | None, Query()] = None,
        kind: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: Annotated[float | None, Query()] = None,
        cursor: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict[str, Any]:
        """Tasks, newest first. Next page: pass the answer's ``next_cursor`` as ``cursor``.

        ``before`` (a Unix time) only filters: tasks created strictly earlier.
        """
        items = await c.ledger.find(
            state=state,
            kind=kind,
            owner=None if who.is_admin else who.key_id,
            limit=limit,
            before=before,
            after=PageCursor.decode(cursor) if cursor is not None else None,
        )
        last = items[-1] if len(items) == limit else None
        return {
            "tasks": [task_public(t) for t in items],
            "next_cursor": PageCursor(last.created_at, last.id).encode() if last else None,
        }

    @app.post("/api/gc", tags=["tasks"])
    async def gc(
        who: Caller, retention_s: Annotated[float | None, Query(ge=0, le=10 * 365 * 86400)] = None
    ) -> dict[str, Any]:
        """Sweep now (admin): delete finished tasks past retention, then blobs nothing refers to.

        ``retention_s`` overrides the configured retention for this sweep (0: delete no task).
        """
        who.require_admin()
        return dataclasses.asdict(await c.collector.sweep(retention_s))

    @app.get("/api/tasks/{task_id}", tags=["tasks"])
    async def get_task(task_id: str, who: Caller) -> dict[str, Any]:
        """A task with its attempts and result."""
        task, attempts = await visible_task(task_id, who)
        return task_public(task, attempts)

    @app.delete("/api/tasks/{task_id}", tags=["tasks"])
    async def cancel_task(task_id: str, who: Caller) -> dict[str, Any]:
        """Cancel a task; a node running it is told to stop."""
        await visible_task(task_id, who)
        return task_public(await c.ledger.cancel(task_id))

    @app.get("/api/tasks/{task_id}/outputs/{path:path}", tags=["tasks"])
    async def download_output(task_id: str, path: str, who: Caller) -> Response:
        """Download one output file of a finished task."""
        norm = safe_relative_path(path, "path", allow_glob=True)
        task, _ = await visible_task(task_id, who)
        outputs = task.result.outputs if task.result else []
        for out in outputs:
            if out.path == norm:
                return FileResponse(
                    c.blobs.path(out.sha256),
                    filename=norm.rsplit("/", 1)[-1],
                    media_type="application/octet-stream",
                    headers={"X-Content-SHA256": out.sha256},
                )
        raise NotFound(f"task {task_id} has no output {norm!r}", field="path")
