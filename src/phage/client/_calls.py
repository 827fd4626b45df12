"""The coordinator's HTTP API, described once: each call is a request plus how to read its answer.

:class:`~phage.client.sdk.PhageClient` (async) and :class:`~phage.client.sync.Client` (blocking)
only send these and parse the answers, so the two clients cannot drift apart (httpx's own split
between ``Client`` and ``AsyncClient`` over shared request models is the model).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

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
from phage.client.pinning import verify_for
from phage.errors import PhageError

R = TypeVar("R")

Progress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``, called as bytes move."""


class PhageClientError(PhageError):
    """The coordinator answered with an error (``status`` is the HTTP status, ``body`` the error body)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", body)), field=body.get("field"))
        self.status = status
        self.body = body


def http_options(
    url: str, api_key: str, timeout: float | None, verify: ssl.SSLContext | bool, ca_fingerprint: str | None
) -> dict[str, Any]:
    """What both clients give httpx: the base URL, the bearer key, the timeout and what TLS trusts.

    ``ca_fingerprint`` pins a pool's own CA the way nodes do (see :mod:`phage.client.pinning`);
    otherwise ``verify`` is an SSL context or True for the system's trust store.
    """
    if ca_fingerprint:
        verify = verify_for(url, ca_cert=None, ca_fingerprint=ca_fingerprint)
    return {
        "base_url": url.rstrip("/"),
        "headers": {"Authorization": f"Bearer {api_key}"},
        "timeout": timeout,
        "verify": verify,
    }


def raise_for_error(response: httpx.Response) -> None:
    """Turn an error answer into :class:`PhageClientError` (phage's and OpenAI's error shapes)."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    if isinstance(body.get("error"), dict):  # OpenAI's error shape, from /v1
        body = {"message": body["error"].get("message", ""), "field": body["error"].get("param")}
    raise PhageClientError(response.status_code, body)


@dataclass(frozen=True)
class Call(Generic[R]):
    """One request and the parser of its JSON answer."""

    method: str
    path: str
    parse: Callable[[Any], R]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, Any] | None = field(default=None, compare=False)

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The httpx request for this call."""
        return client.build_request(
            self.method, self.path, params=self.params, json=self.json, data=self.data, files=self.files
        )


def _tasks(body: Any) -> list[TaskRef]:
    if "tasks" in body:
        return [TaskRef.model_validate(t) for t in body["tasks"]]
    return [TaskRef.model_validate(body)]


def submit(task: dict[str, Any]) -> Call[Task]:
    """One task as JSON (for ``count`` > 1, use :func:`submit_many`, which answers with every id)."""
    if task.get("count", 1) != 1:
        raise ValueError("submit() makes one task; use submit_many([task]) for count > 1")
    return Call("POST", "/api/tasks", Task.model_validate, json=task)


def submit_many(tasks: list[dict[str, Any]]) -> Call[list[TaskRef]]:
    """Several tasks in one request (one transaction)."""
    return Call("POST", "/api/tasks", _tasks, json={"tasks": tasks})


def submit_archive(archive: IO[bytes], manifest: dict[str, Any], task: dict[str, Any]) -> Call[list[TaskRef]]:
    """A job (``count`` copies) whose workspace is a ``.tar.gz`` file object, streamed from disk."""
    spec = {"kind": "job", "manifest": manifest, **task}
    return Call(
        "POST",
        "/api/tasks",
        _tasks,
        data={"task": json.dumps(spec)},
        files={"workspace": ("workspace.tar.gz", archive, "application/gzip")},
    )


def get(task_id: str) -> Call[Task]:
    """A task with its attempts and result."""
    return Call("GET", f"/api/tasks/{quote(task_id, safe='')}", Task.model_validate)


def list_tasks(state: str | None, kind: str | None, limit: int, before: float | None) -> Call[TaskPage]:
    """Tasks newest first."""
    params = {k: v for k, v in {"state": state, "kind": kind, "limit": limit, "before": before}.items() if v}
    return Call("GET", "/api/tasks", TaskPage.model_validate, params=params)


def cancel(task_id: str) -> Call[Task]:
    """Cancel a task."""
    return Call("DELETE", f"/api/tasks/{quote(task_id, safe='')}", Task.model_validate)


def status() -> Call[PoolStatus]:
    """The pool summary."""
    return Call("GET", "/api/status", PoolStatus.model_validate)


def nodes() -> Call[list[Node]]:
    """Every node."""
    return Call("GET", "/api/nodes", lambda b: [Node.model_validate(n) for n in b["nodes"]])


NODE_ACTIONS = ("quarantine", "release", "approve", "reject", "drain", "undrain")


def node_action(node_id: str, action: str, params: dict[str, str]) -> Call[Node | TaskRef]:
    """An admin action on a node (``remove`` answers with the id and ``removed``)."""
    nid = quote(node_id, safe="")
    if action == "remove":
        return Call("DELETE", f"/api/nodes/{nid}", TaskRef.model_validate)
    if action not in NODE_ACTIONS:
        raise ValueError(f"unknown node action {action!r}; one of remove, {', '.join(NODE_ACTIONS)}")
    return Call("POST", f"/api/nodes/{nid}/{action}", Node.model_validate, params=params)


def create_key(name: str, role: str, credit_limit_tokens: int | None) -> Call[NewApiKey]:
    """A new API key (admin)."""
    body = {"name": name, "role": role, "credit_limit_tokens": credit_limit_tokens}
    return Call("POST", "/api/keys", NewApiKey.model_validate, json=body)


def list_keys() -> Call[list[ApiKey]]:
    """Every key, without secrets (admin)."""
    return Call("GET", "/api/keys", lambda b: [ApiKey.model_validate(k) for k in b["keys"]])


def revoke_key(key_id: str) -> Call[dict[str, Any]]:
    """Revoke a key (admin)."""
    return Call("DELETE", f"/api/keys/{quote(key_id, safe='')}", dict)


def set_key_limit(key_id: str, credit_limit_tokens: int | None) -> Call[dict[str, Any]]:
    """Set or lift a key's credit limit (admin)."""
    body = {"credit_limit_tokens": credit_limit_tokens}
    return Call("POST", f"/api/keys/{quote(key_id, safe='')}", dict, json=body)


def usage(key_id: str | None) -> Call[list[KeyUsage]]:
    """Token usage per key."""
    params = {"key_id": key_id} if key_id else None
    return Call("GET", "/api/usage", lambda b: [KeyUsage.model_validate(k) for k in b["keys"]], params=params)


def models() -> Call[list[str]]:
    """Models live nodes serve."""
    return Call("GET", "/v1/models", lambda b: [m["id"] for m in b["data"]])


def output_path(task_id: str, path: str) -> str:
    """The download URL path of an output file."""
    return f"/api/tasks/{quote(task_id, safe='')}/outputs/{quote(path)}"


class ProgressReader:
    """A file object that reports how much of it has been read (for upload progress bars)."""

    def __init__(self, raw: IO[bytes], progress: Progress | None) -> None:
        self._raw = raw
        self._progress = progress
        self._done = 0
        self.total: int | None = os.fstat(raw.fileno()).st_size if hasattr(raw, "fileno") else None

    def read(self, size: int = -1) -> bytes:
        """Read and report."""
        chunk = self._raw.read(size)
        self._done += len(chunk)
        if self._progress is not None:
            self._progress(self._done, self.total)
        return chunk

    def fileno(self) -> int:
        """The underlying descriptor (httpx sizes the upload through it)."""
        return self._raw.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek the underlying file (httpx rewinds before sending)."""
        self._done = 0 if offset == 0 and whence == 0 else self._done
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        """Position in the underlying file."""
        return self._raw.tell()


class DownloadSink:
    """Writes a download to ``dest`` through a temporary file, checking the announced SHA-256.

    The file appears under its name only once complete and verified, so a cut connection never
    leaves a truncated output that looks whole.
    """

    def __init__(self, dest: Path, response: httpx.Response, progress: Progress | None) -> None:
        self.dest = dest
        self._tmp = dest.with_name(f".{dest.name}.part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._tmp.open("wb")
        self._hash = hashlib.sha256()
        self._expected = response.headers.get("x-content-sha256")
        length = response.headers.get("content-length")
        self._total = int(length) if length and length.isdigit() else None
        self._progress = progress
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append one chunk."""
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._progress is not None:
            self._progress(self.size, self._total)

    def finish(self) -> Path:
        """Check the digest and move the file into place."""
        self._file.close()
        if self._expected and self._hash.hexdigest() != self._expected:
            self._tmp.unlink(missing_ok=True)
            raise PhageClientError(
                502, {"message": f"download of {self.dest.name} does not match its SHA-256; try again"}
            )
        self._tmp.replace(self.dest)
        return self.dest

    def abort(self) -> None:
        """Drop the partial file."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def list_workloads() -> Call[WorkloadList]:
    """Approved workloads and whether the pool enforces them."""
    return Call("GET", "/api/workloads", WorkloadList.model_validate)


def approve_workload(digest: str, name: str) -> Call[WorkloadApproval]:
    """Approve a workload by digest (admin)."""
    return Call(
        "POST", "/api/workloads", WorkloadApproval.model_validate, json={"digest": digest, "name": name}
    )


def revoke_workload(digest: str) -> Call[dict[str, Any]]:
    """Withdraw a workload's approval (admin)."""
    return Call("DELETE", f"/api/workloads/{quote(digest, safe='')}", dict)


def workload_digest(task: dict[str, Any]) -> Call[WorkloadDigest]:
    """The workload digest a task body would have (nothing is submitted)."""
    return Call("POST", "/api/workloads/digest", WorkloadDigest.model_validate, json=task)
