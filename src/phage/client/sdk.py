"""The async SDK over the coordinator's HTTP API (httpx + websockets); answers are typed models.

``async with PhageClient(url, key) as c: task = await c.wait((await c.submit({...})).id)``.
The blocking twin is :class:`phage.client.sync.Client`; both send the calls of :mod:`._calls`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from phage.api.models import (
    ApiKey,
    KeyUsage,
    NewApiKey,
    Node,
    PoolStatus,
    Task,
    TaskPage,
    TaskRef,
    WorkloadApproval,
    WorkloadDigest,
    WorkloadList,
)
from phage.client import _calls as api
from phage.client._calls import Call, DownloadSink, PhageClientError, Progress, ProgressReader

R = TypeVar("R")

__all__ = ["PhageClient", "PhageClientError"]


class PhageClient:
    """Async client: ``async with PhageClient(url, key) as c: await c.submit({...})``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | None = 30.0,
        verify: ssl.SSLContext | bool = True,
        ca_fingerprint: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        options = api.http_options(url, api_key, timeout, verify, ca_fingerprint)
        self._verify: ssl.SSLContext | bool = options["verify"]
        self._http = httpx.AsyncClient(**options, transport=transport)

    async def __aenter__(self) -> PhageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def call(self, call: Call[R]) -> R:
        """Send one call and parse its answer."""
        response = await self._http.send(call.request(self._http))
        api.raise_for_error(response)
        return call.parse(response.json())

    # ---- tasks -------------------------------------------------------------

    async def submit(self, task: dict[str, Any]) -> Task:
        """Submit one task (JSON)."""
        return await self.call(api.submit(task))

    async def submit_many(self, tasks: list[dict[str, Any]]) -> list[TaskRef]:
        """Submit several tasks in one request (one transaction)."""
        return await self.call(api.submit_many(tasks))

    async def submit_archive(
        self, archive: Path, manifest: dict[str, Any], *, progress: Progress | None = None, **task: Any
    ) -> list[TaskRef]:
        """Submit a job (``count=N`` for N copies) whose workspace is a ``.tar.gz`` file, streamed."""
        with archive.open("rb") as raw:
            return await self.call(api.submit_archive(ProgressReader(raw, progress), manifest, task))  # type: ignore[arg-type]

    async def get(self, task_id: str) -> Task:
        """A task with attempts and result."""
        return await self.call(api.get(task_id))

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> TaskPage:
        """Tasks, newest first."""
        return await self.call(api.list_tasks(state, kind, limit, before))

    async def gc(self, retention_s: float | None = None) -> dict[str, Any]:
        """Sweep now (admin): finished tasks past retention, then unreferenced blobs."""
        params = {} if retention_s is None else {"retention_s": retention_s}
        return dict(await self._json(await self._http.post("/api/gc", params=params)))

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task."""
        return await self.call(api.cancel(task_id))

    async def wait(
        self, task_id: str, *, poll_s: float = 0.5, on_change: Callable[[Task], None] | None = None
    ) -> Task:
        """Poll until the task is final (bound it with ``asyncio.timeout``)."""
        last = ""
        while True:
            task = await self.get(task_id)
            if on_change is not None and task.state != last:
                on_change(task)
            last = task.state
            if task.final:
                return task
            await asyncio.sleep(poll_s)

    async def download(
        self, task_id: str, path: str, dest: Path, *, progress: Progress | None = None
    ) -> Path:
        """Stream one output file to ``dest`` (checked against its SHA-256; never held in memory)."""
        async with self._http.stream("GET", api.output_path(task_id, path)) as response:
            if response.status_code >= 400:
                await response.aread()
                api.raise_for_error(response)
            sink = DownloadSink(dest, response, progress)
            try:
                async for chunk in response.aiter_bytes(1 << 16):
                    sink.write(chunk)
            except BaseException:
                sink.abort()
                raise
        return sink.finish()

    # ---- pool --------------------------------------------------------------

    async def status(self) -> PoolStatus:
        """Pool summary."""
        return await self.call(api.status())

    async def nodes(self) -> list[Node]:
        """Every node."""
        return await self.call(api.nodes())

    async def node_action(self, node_id: str, action: str, **params: str) -> Node | TaskRef:
        """An admin action on a node: ``remove``, ``quarantine`` (reason=…), ``release``,
        ``approve`` (trusted=…, max_concurrent_jobs=…), ``reject``, ``drain``, ``undrain``."""
        return await self.call(api.node_action(node_id, action, params))

    async def feed(self) -> AsyncIterator[dict[str, Any]]:
        """Live events from ``WS /api/feed``."""
        import websockets

        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/api/feed"
        context = self._verify if isinstance(self._verify, ssl.SSLContext) else None
        async with websockets.connect(
            ws_url,
            additional_headers={"Authorization": f"Bearer {self.api_key}"},
            max_size=2**22,
            ssl=context,
        ) as ws:
            async for message in ws:
                yield json.loads(message)

    # ---- keys and usage ----------------------------------------------------

    async def create_key(
        self, name: str, role: str = "user", credit_limit_tokens: int | None = None
    ) -> NewApiKey:
        """A new API key (admin); the answer holds its secret, shown once."""
        return await self.call(api.create_key(name, role, credit_limit_tokens))

    async def list_keys(self) -> list[ApiKey]:
        """Every key (admin), without secrets."""
        return await self.call(api.list_keys())

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke a key (admin)."""
        return await self.call(api.revoke_key(key_id))

    async def set_key_limit(self, key_id: str, credit_limit_tokens: int | None) -> dict[str, Any]:
        """Set (or lift, with None) a key's credit limit in tokens (admin)."""
        return await self.call(api.set_key_limit(key_id, credit_limit_tokens))

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

    async def usage(self, key_id: str | None = None) -> list[KeyUsage]:
        """Token usage per key, by model and by node."""
        return await self.call(api.usage(key_id))

    # ---- approved workloads ------------------------------------------------

    async def list_workloads(self) -> WorkloadList:
        """Approved workloads, and whether the pool runs only those."""
        return await self.call(api.list_workloads())

    async def approve_workload(self, digest: str, name: str = "") -> WorkloadApproval:
        """Approve a workload by its digest (admin)."""
        return await self.call(api.approve_workload(digest, name))

    async def revoke_workload(self, digest: str) -> dict[str, Any]:
        """Withdraw an approval (admin)."""
        return await self.call(api.revoke_workload(digest))

    async def workload_digest(self, task: dict[str, Any]) -> WorkloadDigest:
        """The digest a task would have, without submitting it."""
        return await self.call(api.workload_digest(task))

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
        return await self.call(api.models())

    async def chat_stream(
        self, model: str, messages: list[dict[str, str]], **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a chat completion: yields OpenAI chunk dicts (the last carries ``usage``)."""
        body = {"model": model, "messages": messages, "stream": True, **params}
        async with self._http.stream("POST", "/v1/chat/completions", json=body, timeout=None) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                api.raise_for_error(resp)
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

    async def _json(self, response: httpx.Response) -> Any:
        api.raise_for_error(response)
        return response.json()

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
