"""Helpers for tests and benchmarks: real coordinator and node processes on loopback.

Shipped in the package (as Temporal ships its testing module) so that
integration tests, benchmarks and users' own tests start pools the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
    )


async def eventually(check: Callable[[], object], within: float = 10.0, what: str = "condition") -> None:
    """In async tests: poll ``check`` until it is truthy; raise TimeoutError naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def _phage_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "phage.client.cli", *args]


def phage_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``phage ARGS`` to completion (text output captured); ``env`` replaces the environment."""
    return subprocess.run(_phage_argv(*args), env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class CoordinatorProcess:
    """A ``phage coordinator`` subprocess with fixed ports (so it can be restarted in place)."""

    data_dir: Path
    heartbeat_s: float = 0.5
    env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None
    """``--database-url``; None: ``PHAGE_DATABASE_URL`` from the environment, else SQLite in ``data_dir``."""
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    enroll_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    args: tuple[str, ...] = ()
    """Further ``phage coordinator`` options (``--https``, TLS files)."""

    @property
    def https(self) -> bool:
        """True when started to serve HTTPS."""
        return any(a in ("--https", "--tls-cert-file") for a in self.args)

    @property
    def url(self) -> str:
        """HTTP(S) base URL."""
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def ca_file(self) -> Path:
        """The pool CA's certificate (what clients pin for HTTPS from the pool's own CA)."""
        return self.data_dir / "pki" / "ca.pem"

    def _verify(self) -> ssl.SSLContext | bool:
        if "--tls-cert-file" in self.args:
            return ssl.create_default_context(cafile=self.args[self.args.index("--tls-cert-file") + 1])
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.https else True

    @property
    def grpc_address(self) -> str:
        """The mTLS node address."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def enroll_address(self) -> str:
        """The enrollment address."""
        return f"127.0.0.1:{self.enroll_port}"

    def start(self, timeout: float = 30.0) -> CoordinatorProcess:
        """Start and wait until /healthz answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        log = self.log_path.open("ab")
        argv = _phage_argv(
            "coordinator",
            "--data-dir",
            str(self.data_dir),
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--enroll-port",
            str(self.enroll_port),
            "--heartbeat",
            str(self.heartbeat_s),
            *self.args,
        )
        if self.database_url:
            argv += ["--database-url", self.database_url]
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=log, env={**os.environ, **self.env}, start_new_session=True
        )
        wait_until(self._healthy, timeout, what=f"coordinator on {self.url} (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"coordinator exited with {self.proc.returncode}; log: {self.log_path}")
        ok = httpx.get(f"{self.url}/healthz", timeout=2, verify=self._verify()).status_code == 200
        return ok and (self.data_dir / "coordinator.json").exists()

    @property
    def info(self) -> dict[str, Any]:
        """The coordinator.json it wrote (token, CA fingerprint, addresses)."""
        data: dict[str, Any] = json.loads((self.data_dir / "coordinator.json").read_text())
        return data

    @property
    def admin_key(self) -> str:
        """The admin API key."""
        return (self.data_dir / "admin-key").read_text().strip()

    def client(self, key: str | None = None) -> httpx.Client:
        """A synchronous HTTP client with the admin key."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=30,
            verify=self._verify(),
        )

    def kill(self) -> None:
        """SIGKILL: no clean shutdown at all."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        stop_all([self])


@dataclass
class NodeProcess:
    """A ``phage node`` subprocess joined to a :class:`CoordinatorProcess`."""

    coordinator: CoordinatorProcess
    key_dir: Path
    name: str = "node"
    concurrency: int | None = 4
    """Slots; None starts the node with its default (no ``--concurrency``)."""
    sandbox: str | None = "none"
    """Backend name; None starts the node with its default (no ``--sandbox``)."""
    heartbeat_s: float = 0.5
    engine: str | None = None
    model: str | None = None
    args: tuple[str, ...] = ()
    """Further ``phage node`` options (engine settings, model memory)."""
    replicas: tuple[CoordinatorProcess, ...] = ()
    """Coordinator replicas to dial, in order (``--coordinator a,b``); empty: ``coordinator`` alone."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment (e.g. the fault-injection hook ``PHAGE_TEST_CORRUPT_OUTPUTS``, node/faults.py)."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        """Start the node (it enrolls on its own)."""
        info = self.coordinator.info
        self.key_dir.mkdir(parents=True, exist_ok=True)
        log = (self.key_dir.parent / f"{self.key_dir.name}.log").open("ab")
        dial = self.replicas or (self.coordinator,)
        argv = _phage_argv(
            "node",
            "--coordinator",
            ",".join(c.grpc_address for c in dial),
            "--enroll",
            ",".join(c.enroll_address for c in dial),
            "--ca-fingerprint",
            info["ca_fingerprint"],
            "--key-dir",
            str(self.key_dir),
            "--name",
            self.name,
            "--heartbeat",
            str(self.heartbeat_s),
        )
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        if self.sandbox is not None:
            argv += ["--sandbox", self.sandbox]
        if self.engine:
            argv += ["--engine", self.engine, "--model", str(self.model)]
        argv += list(self.args)
        env = {**os.environ, "PHAGE_JOIN_TOKEN": info["join_token"], **self.env}  # never in argv
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)
        return self

    @property
    def node_id(self) -> str:
        """The node's id, once its identity exists."""
        from phage.pki import NodeIdentity

        wait_until(lambda: (self.key_dir / "identity.pem").exists(), 30, what="node identity")
        time.sleep(0.05)  # the key file is written in one call; give the writer a moment to close it
        return NodeIdentity.load_or_create(self.key_dir).node_id

    def kill(self) -> None:
        """SIGKILL the node."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        stop_all([self])


def stop_all(processes: Iterable[CoordinatorProcess | NodeProcess], grace_s: float = 10.0) -> None:
    """Stop a pool: every node at once, then every coordinator at once; SIGKILL what outlives ``grace_s``.

    One after the other, a pool's teardown costs the sum of its processes' shutdowns (half a
    second to two each); signalled together it costs the slowest. Nodes go first so that none
    of them spends its shutdown retrying a coordinator that has already gone.
    """
    procs = list(processes)
    for wave in (
        [p for p in procs if isinstance(p, NodeProcess)],
        [p for p in procs if not isinstance(p, NodeProcess)],
    ):
        alive = [p for p in wave if p.proc is not None and p.proc.poll() is None]
        for p in alive:
            assert p.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in alive:
            assert p.proc is not None
            try:
                p.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


def wait_online(coordinator: CoordinatorProcess, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Wait until ``count`` nodes are online; returns them."""
    with coordinator.client() as c:

        def online() -> list[dict[str, Any]]:
            nodes = [n for n in c.get("/api/nodes").json()["nodes"] if n["state"] == "online"]
            return nodes if len(nodes) >= count else []

        return wait_until(online, timeout, what=f"{count} nodes online")


def wait_tasks_final(
    coordinator: CoordinatorProcess, ids: list[str], timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Wait until every task id is verified, failed or cancelled; returns them with attempts."""
    final = {"verified", "failed", "cancelled"}
    with coordinator.client() as c:

        def done() -> list[dict[str, Any]]:
            out = []
            for tid in ids:
                t = c.get(f"/api/tasks/{tid}").json()
                if t["state"] not in final:
                    return []
                out.append(t)
            return out

        return wait_until(done, timeout, interval=0.2, what=f"{len(ids)} tasks to finish")
