"""A small async SDK over the coordinator's HTTP API (httpx + websockets)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from phage.errors import PhageError


class PhageClientError(PhageError):
    """The coordinator answered with an error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", body)), field=body.get("field"))
        self.status = status
        self.body = body


class PhageClient:
    """``async with PhageClient(url, key) as c: await c.submit({...})``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> PhageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text}
            raise PhageClientError(response.status_code, body)
        return response.json()

    async def submit(self, task: dict[str, Any]) -> dict[str, Any]:
        """Submit one task (JSON)."""
        return dict(await self._json(await self._http.post("/api/tasks", json=task)))

    async def submit_many(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit several tasks in one request (one transaction)."""
        body = await self._json(await self._http.post("/api/tasks", json={"tasks": tasks}))
        return list(body["tasks"]) if "tasks" in body else [body]

    async def submit_archive(self, archive: bytes, manifest: dict[str, Any], **task: Any) -> dict[str, Any]:
        """Submit a job whose workspace is a ``.tar.gz``."""
        spec = {"kind": "job", "manifest": manifest, **task}
        files = {"workspace": ("workspace.tar.gz", archive, "application/gzip")}
        resp = await self._http.post("/api/tasks", data={"task": json.dumps(spec)}, files=files)
        return dict(await self._json(resp))

    async def get(self, task_id: str) -> dict[str, Any]:
        """A task with attempts and result."""
        return dict(await self._json(await self._http.get(f"/api/tasks/{task_id}")))

    async def list_tasks(self, **params: Any) -> dict[str, Any]:
        """Tasks, newest first (filters: state, kind, limit, before)."""
        clean = {k: v for k, v in params.items() if v is not None}
        return dict(await self._json(await self._http.get("/api/tasks", params=clean)))

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task."""
        return dict(await self._json(await self._http.delete(f"/api/tasks/{task_id}")))

    async def download(self, task_id: str, path: str, dest: Path | None = None) -> bytes:
        """An output file's bytes (also written to ``dest`` if given)."""
        resp = await self._http.get(f"/api/tasks/{task_id}/outputs/{path}")
        if resp.status_code >= 400:
            await self._json(resp)
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(resp.content)
        return resp.content

    async def status(self) -> dict[str, Any]:
        """Pool summary."""
        return dict(await self._json(await self._http.get("/api/status")))

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node."""
        return list((await self._json(await self._http.get("/api/nodes")))["nodes"])

    async def remove_node(self, node_id: str) -> dict[str, Any]:
        """Remove a node (admin)."""
        return dict(await self._json(await self._http.delete(f"/api/nodes/{node_id}")))

    async def node_action(self, node_id: str, action: str, **params: str) -> dict[str, Any]:
        """An admin action on a node: ``remove``, ``quarantine`` (reason=…), ``release``."""
        if action == "remove":
            return await self.remove_node(node_id)
        resp = await self._http.post(f"/api/nodes/{node_id}/{action}", params=params)
        return dict(await self._json(resp))

    async def feed(self) -> AsyncIterator[dict[str, Any]]:
        """Live events from ``WS /api/feed``."""
        import websockets

        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/api/feed"
        async with websockets.connect(
            ws_url, additional_headers={"Authorization": f"Bearer {self.api_key}"}, max_size=2**22
        ) as ws:
            async for message in ws:
                yield json.loads(message)
