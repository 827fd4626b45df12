"""The blocking SDK, for scripts and notebooks: the same calls and typed answers as the async one.

``with Client(url, key) as c: task = c.wait(c.submit({...}).id)``.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
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
from phage.client._calls import Call, DownloadSink, Progress, ProgressReader

R = TypeVar("R")


class Client:
    """Blocking client: ``with Client(url, key) as c: c.submit({...})``."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | None = 30.0,
        verify: ssl.SSLContext | bool = True,
        ca_fingerprint: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            **api.http_options(url, api_key, timeout, verify, ca_fingerprint), transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def call(self, call: Call[R]) -> R:
        """Send one call and parse its answer."""
        response = self._http.send(call.request(self._http))
        api.raise_for_error(response)
        return call.parse(response.json())

    def submit(self, task: dict[str, Any]) -> Task:
        """Submit one task (JSON)."""
        return self.call(api.submit(task))

    def submit_many(self, tasks: list[dict[str, Any]]) -> list[TaskRef]:
        """Submit several tasks in one request (one transaction)."""
        return self.call(api.submit_many(tasks))

    def submit_archive(
        self, archive: Path, manifest: dict[str, Any], *, progress: Progress | None = None, **task: Any
    ) -> list[TaskRef]:
        """Submit a job (``count=N`` for N copies) whose workspace is a ``.tar.gz`` file, streamed."""
        with archive.open("rb") as raw:
            return self.call(api.submit_archive(ProgressReader(raw, progress), manifest, task))  # type: ignore[arg-type]

    def get(self, task_id: str) -> Task:
        """A task with attempts and result."""
        return self.call(api.get(task_id))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> TaskPage:
        """Tasks, newest first."""
        return self.call(api.list_tasks(state, kind, limit, before))

    def cancel(self, task_id: str) -> Task:
        """Cancel a task."""
        return self.call(api.cancel(task_id))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_change: Callable[[Task], None] | None = None,
    ) -> Task:
        """Poll until the task is final; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = ""
        while True:
            task = self.get(task_id)
            if on_change is not None and task.state != last:
                on_change(task)
            last = task.state
            if task.final:
                return task
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {task.state} after {timeout}s")
            time.sleep(poll_s)

    def download(self, task_id: str, path: str, dest: Path, *, progress: Progress | None = None) -> Path:
        """Stream one output file to ``dest`` (checked against its SHA-256; never held in memory)."""
        with self._http.stream("GET", api.output_path(task_id, path)) as response:
            if response.status_code >= 400:
                response.read()
                api.raise_for_error(response)
            sink = DownloadSink(dest, response, progress)
            try:
                for chunk in response.iter_bytes(1 << 16):
                    sink.write(chunk)
            except BaseException:
                sink.abort()
                raise
        return sink.finish()

    def status(self) -> PoolStatus:
        """Pool summary."""
        return self.call(api.status())

    def nodes(self) -> list[Node]:
        """Every node."""
        return self.call(api.nodes())

    def node_action(self, node_id: str, action: str, **params: str) -> Node | TaskRef:
        """An admin action on a node (see :meth:`PhageClient.node_action`)."""
        return self.call(api.node_action(node_id, action, params))

    def create_key(self, name: str, role: str = "user", credit_limit_tokens: int | None = None) -> NewApiKey:
        """A new API key (admin); the answer holds its secret, shown once."""
        return self.call(api.create_key(name, role, credit_limit_tokens))

    def list_keys(self) -> list[ApiKey]:
        """Every key (admin), without secrets."""
        return self.call(api.list_keys())

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke a key (admin)."""
        return self.call(api.revoke_key(key_id))

    def set_key_limit(self, key_id: str, credit_limit_tokens: int | None) -> dict[str, Any]:
        """Set (or lift, with None) a key's credit limit in tokens (admin)."""
        return self.call(api.set_key_limit(key_id, credit_limit_tokens))

    def usage(self, key_id: str | None = None) -> list[KeyUsage]:
        """Token usage per key, by model and by node."""
        return self.call(api.usage(key_id))

    def models(self) -> list[str]:
        """Models live nodes serve."""
        return self.call(api.models())

    # ---- approved workloads ------------------------------------------------

    def list_workloads(self) -> WorkloadList:
        """Approved workloads, and whether the pool runs only those."""
        return self.call(api.list_workloads())

    def approve_workload(self, digest: str, name: str = "") -> WorkloadApproval:
        """Approve a workload by its digest (admin)."""
        return self.call(api.approve_workload(digest, name))

    def revoke_workload(self, digest: str) -> dict[str, Any]:
        """Withdraw an approval (admin)."""
        return self.call(api.revoke_workload(digest))

    def workload_digest(self, task: dict[str, Any]) -> WorkloadDigest:
        """The digest a task would have, without submitting it."""
        return self.call(api.workload_digest(task))
