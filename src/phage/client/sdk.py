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
        timeout: float | None = 30.0,
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
            if isinstance(body.get("error"), dict):  # OpenAI's error shape, from /v1
                body = {"message": body["error"].get("message", ""), "field": body["error"].get("param")}
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
        """Tasks, newest first (filters: state, kind, limit, before; page with cursor)."""
        clean = {k: v for k, v in params.items() if v is not None}
        return dict(await self._json(await self._http.get("/api/tasks", params=clean)))

    async def gc(self, retention_s: float | None = None) -> dict[str, Any]:
        """Sweep now (admin): finished tasks past retention, then unreferenced blobs."""
        params = {} if retention_s is None else {"retention_s": retention_s}
        return dict(await self._json(await self._http.post("/api/gc", params=params)))

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
        """An admin action on a node: ``remove``, ``quarantine`` (reason=…), ``release``,
        ``approve`` (trusted=…, max_concurrent_jobs=…), ``reject``, ``drain``, ``undrain``."""
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

    # ---- keys and usage ----------------------------------------------------

    async def create_key(
        self, name: str, role: str = "user", credit_limit_tokens: int | None = None
    ) -> dict[str, Any]:
        """A new API key (admin); the answer holds its secret, shown once."""
        body: dict[str, Any] = {"name": name, "role": role, "credit_limit_tokens": credit_limit_tokens}
        return dict(await self._json(await self._http.post("/api/keys", json=body)))

    async def list_keys(self) -> list[dict[str, Any]]:
        """Every key (admin), without secrets."""
        return list((await self._json(await self._http.get("/api/keys")))["keys"])

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke a key (admin)."""
        return dict(await self._json(await self._http.delete(f"/api/keys/{key_id}")))

    async def set_key_limit(self, key_id: str, credit_limit_tokens: int | None) -> dict[str, Any]:
        """Set (or lift, with None) a key's credit limit in tokens (admin)."""
        body = {"credit_limit_tokens": credit_limit_tokens}
        return dict(await self._json(await self._http.post(f"/api/keys/{key_id}", json=body)))

    async def top_up_key(self, key_id: str, tokens: int) -> dict[str, Any]:
        """Add tokens to a key's credit balance (admin)."""
        body = {"tokens": tokens}
        return dict(await self._json(await self._http.post(f"/api/keys/{key_id}/topup", json=body)))

    async def set_key_rates(
        self,
        key_id: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        max_concurrent: int | None,
    ) -> dict[str, Any]:
        """Set a key's own rate limits (None: the coordinator's default) (admin)."""
        body = {
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "max_concurrent": max_concurrent,
        }
        return dict(await self._json(await self._http.post(f"/api/keys/{key_id}", json=body)))

    async def usage_requests(self, key_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The per-request usage log, newest first."""
        params: dict[str, Any] = {"limit": limit, **({"key_id": key_id} if key_id else {})}
        return list(
            (await self._json(await self._http.get("/api/usage/requests", params=params)))["requests"]
        )

    async def node_accounts(self) -> list[dict[str, Any]]:
        """Tokens each node served (its owner's account) (admin)."""
        return list((await self._json(await self._http.get("/api/usage/nodes")))["nodes"])

    async def usage(self, key_id: str | None = None) -> list[dict[str, Any]]:
        """Token usage per key, by model and by node."""
        params = {"key_id": key_id} if key_id else {}
        return list((await self._json(await self._http.get("/api/usage", params=params)))["keys"])

    # ---- sharded models ------------------------------------------------------

    async def declare_sharded_model(self, **model: Any) -> dict[str, Any]:
        """Declare a model served in block ranges (admin): name, checkpoint, num_blocks, bytes_per_block…"""
        return dict(await self._json(await self._http.post("/api/models/sharded", json=model)))

    async def sharded_models(self) -> list[dict[str, Any]]:
        """Every sharded model with its coverage."""
        return list((await self._json(await self._http.get("/api/models/sharded")))["models"])

    async def coverage(self, name: str) -> dict[str, Any]:
        """Who holds each block of ``name`` now."""
        return dict(await self._json(await self._http.get(f"/api/models/{name}/coverage")))

    async def delete_sharded_model(self, name: str) -> dict[str, Any]:
        """Stop serving a sharded model (admin)."""
        return dict(await self._json(await self._http.delete(f"/api/models/sharded/{name}")))

    # ---- chat --------------------------------------------------------------

    async def models(self) -> list[str]:
        """Models live nodes serve."""
        return [m["id"] for m in (await self._json(await self._http.get("/v1/models")))["data"]]

    async def chat_stream(
        self, model: str, messages: list[dict[str, str]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a chat completion: yields OpenAI chunk dicts (the last carries ``usage``)."""
        body = {"model": model, "messages": messages, "stream": True, **params}
        async with self._http.stream("POST", "/v1/chat/completions", json=body, timeout=None) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                await self._json(resp)
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if isinstance(chunk.get("error"), dict):
                    raise PhageClientError(503, {"message": chunk["error"].get("message", "chat failed")})
                yield chunk

    # ---- composable networks ---------------------------------------------------------

    async def upload_dataset(self, data: bytes) -> str:
        """Upload a dataset (an ``.npz`` or safetensors file with ``x`` and ``y``); returns its sha256."""
        resp = await self._http.post("/api/datasets", content=data, timeout=None)
        return str((await self._json(resp))["sha256"])

    async def train(self, spec: dict[str, Any] | str, dataset: str, **training: Any) -> dict[str, Any]:
        """Start training a network (spec as an object or JSON/YAML text) on an uploaded dataset."""
        body = {"spec": spec, "dataset": dataset, "training": training}
        return dict(await self._json(await self._http.post("/api/networks", json=body)))

    async def network(self, network_id: str) -> dict[str, Any]:
        """A training job: its VNodes, where they run, their progress."""
        return dict(await self._json(await self._http.get(f"/api/networks/{network_id}")))

    async def networks(self) -> list[dict[str, Any]]:
        """Training jobs, newest first."""
        return list((await self._json(await self._http.get("/api/networks")))["networks"])

    async def forward(self, network_id: str, inputs: list[Any]) -> dict[str, Any]:
        """Run a trained network on rows of inputs."""
        resp = await self._http.post(f"/api/networks/{network_id}/forward", json={"inputs": inputs})
        return dict(await self._json(resp))

    async def network_weights(self, network_id: str) -> bytes:
        """A trained network as one safetensors file."""
        resp = await self._http.get(f"/api/networks/{network_id}/weights", timeout=None)
        if resp.status_code >= 400:
            await self._json(resp)
        return resp.content
