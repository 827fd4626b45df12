"""The HTTP edge: REST, the live feed over WebSocket, health. Routes validate and delegate."""

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from phage import __version__
from phage.coordinator.admission_api import install_admission_api
from phage.coordinator.core import Coordinator
from phage.coordinator.dashboard import install_dashboard
from phage.coordinator.keys import Principal
from phage.coordinator.keys_api import install_keys
from phage.coordinator.metrics import install_metrics
from phage.coordinator.openai_api import install_openai
from phage.coordinator.pool_api import install_pool_api
from phage.coordinator.requests import TaskRequest, parse_task_request
from phage.coordinator.uploads import multipart_form, read_archive
from phage.coordinator.views import node_public, task_public
from phage.coordinator.workloads_api import install_workloads_api
from phage.domain import TaskState
from phage.domain.manifest import safe_relative_path
from phage.errors import InvalidInput, NotFound, PayloadTooLarge, PhageError, Unauthenticated

log = logging.getLogger("phage.http")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}", field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, what: str = "body") -> Any:
    """JSON from bytes, with the position of the first error."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}", field=what) from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply", field=what) from None


async def _until_closed(ws: WebSocket) -> None:
    """Return once the client disconnects; messages it sends are ignored."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


def create_app(coordinator: Coordinator) -> FastAPI:
    """The coordinator's HTTP application."""
    c = coordinator
    s = c.settings
    app = FastAPI(
        title="phage coordinator",
        version=__version__,
        description="Submit work to a pool of contributed machines; watch nodes and tasks live.",
    )

    @app.exception_handler(PhageError)
    async def _phage_error(_: Request, exc: PhageError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse(
            {
                "error": "InvalidInput",
                "message": f"{field or 'request'}: {first.get('msg', 'invalid')}",
                "field": field,
            },
            status_code=400,
        )

    async def principal(request: Request) -> Principal:
        return await c.keys.authenticate(request.headers.get("authorization"))

    Caller = Annotated[Principal, Depends(principal)]

    async def visible_task(task_id: str, who: Principal) -> tuple[Any, Any]:
        task, attempts = await c.get_task(task_id)
        if not who.is_admin and task.owner != who.key_id:
            raise NotFound(f"no task {task_id!r}", field="id")
        return task, attempts

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the coordinator is up and its store answers."""
        counts = await c.store.count_tasks()
        return {"ok": True, "version": __version__, "queued": counts.get("queued", 0)}

    @app.get("/api/ca", response_class=PlainTextResponse, tags=["pool"])
    async def ca_certificate() -> str:
        """The coordinator CA certificate (public), for nodes and tools that pin it."""
        assert c.ca is not None
        return c.ca.cert_pem.decode()

    @app.post("/api/tasks", status_code=201, tags=["tasks"])
    async def submit(request: Request, who: Caller) -> dict[str, Any]:
        """Submit one task (a JSON object), many (``{"tasks": [...]}``), or multipart with a workspace.

        Multipart fields: ``task`` (JSON) or ``manifest`` (JSON), and ``workspace``
        (a ``.tar.gz``; ``files`` is accepted as its seed-002 name).
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
        made = await c.submit(reqs, who)
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
    ) -> dict[str, Any]:
        """Tasks, newest first. Page with ``before`` = the last item's ``created_at``."""
        items = await c.store.list_tasks(
            state=state, kind=kind, owner=None if who.is_admin else who.key_id, limit=limit, before=before
        )
        return {
            "tasks": [task_public(t) for t in items],
            "next_before": items[-1].created_at if len(items) == limit else None,
        }

    @app.get("/api/tasks/{task_id}", tags=["tasks"])
    async def get_task(task_id: str, who: Caller) -> dict[str, Any]:
        """A task with its attempts and result."""
        task, attempts = await visible_task(task_id, who)
        return task_public(task, attempts)

    @app.delete("/api/tasks/{task_id}", tags=["tasks"])
    async def cancel_task(task_id: str, who: Caller) -> dict[str, Any]:
        """Cancel a task; a node running it is told to stop."""
        await visible_task(task_id, who)
        return task_public(await c.cancel(task_id))

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

    @app.get("/api/status", tags=["pool"])
    async def status(who: Caller) -> dict[str, Any]:
        """Pool summary: nodes, VRAM, queue."""
        counts = await c.store.count_tasks()
        online = c.pool.online_nodes()
        return {
            "version": __version__,
            "uptime_s": round(c.clock() - c.started_at, 1),
            "nodes": {
                "total": len(c.pool.nodes),
                "online": len(online),
                "dead": sum(1 for n in c.pool.nodes.values() if n.node.state.value == "dead"),
            },
            "slots": {
                "total": sum(n.node.max_concurrency for n in online),
                "busy": sum(len(n.attempts) for n in online),
            },
            "vram": {
                "total_bytes": sum(node_public(n)["vram_total_bytes"] for n in online),
                "used_bytes": sum(node_public(n)["vram_used_bytes"] for n in online),
            },
            "queue": {"depth": len(c.queue), "by_kind": c.queue.depth_by_kind()},
            "tasks": counts,
        }

    @app.get("/api/nodes", tags=["pool"])
    async def nodes(who: Caller) -> dict[str, Any]:
        """Every node with its live figures."""
        return {"nodes": [node_public(n) for n in c.pool.nodes.values()]}

    @app.post("/api/nodes/{node_id:path}/release", tags=["pool"])
    async def release_node(node_id: str, who: Caller) -> dict[str, Any]:
        """Lift a node's quarantine (admin)."""
        who.require_admin()
        if node_id not in c.pool.nodes:
            raise NotFound(f"no node {node_id!r}", field="id")
        await c.release(node_id)
        return node_public(c.pool.nodes[node_id])

    @app.post("/api/nodes/{node_id:path}/quarantine", tags=["pool"])
    async def quarantine_node(
        node_id: str, who: Caller, reason: str = "quarantined by an admin"
    ) -> dict[str, Any]:
        """Quarantine a node by hand (admin): it gets no work until released."""
        who.require_admin()
        if node_id not in c.pool.nodes:
            raise NotFound(f"no node {node_id!r}", field="id")
        await c.quarantine(node_id, reason[:500])
        return node_public(c.pool.nodes[node_id])

    @app.delete("/api/nodes/{node_id:path}", tags=["pool"])
    async def remove_node(node_id: str, who: Caller) -> dict[str, Any]:
        """Remove a node (admin): its certificate is refused from now on."""
        who.require_admin()
        await c.remove_node(node_id)
        return {"id": node_id, "state": "removed"}

    @app.websocket("/api/feed")
    async def feed(ws: WebSocket) -> None:
        """Live events: one JSON message per task or node state change."""
        key = ws.query_params.get("key")
        header = ws.headers.get("authorization") or (f"Bearer {key}" if key else None)
        try:
            await c.keys.authenticate(header)
        except Unauthenticated as exc:
            await ws.close(code=4401, reason=exc.message)
            return
        await ws.accept()
        async with c.bus.subscribe() as sub:
            await ws.send_json({"type": "hello", "version": __version__})
            # Watch for the client going away (or the server stopping) even while no events come.
            gone = asyncio.ensure_future(_until_closed(ws))
            try:
                while True:
                    nxt = asyncio.ensure_future(sub.next())
                    done, _ = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if gone in done:
                        nxt.cancel()
                        return
                    await ws.send_json(nxt.result())
            except (WebSocketDisconnect, RuntimeError):
                return
            finally:
                gone.cancel()

    async def read_json(request: Request) -> Any:
        return parse_json(await read_body(request, s.max_request_bytes))

    install_openai(app, c, read_json)
    install_keys(app, c, principal)
    install_admission_api(app, c)
    install_pool_api(app, c)
    install_workloads_api(app, c, principal)
    install_metrics(app, c)
    install_dashboard(app, c)
    return app
