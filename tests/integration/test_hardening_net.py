"""Attacks on the coordinator's network edges, replayed: each must now fail to harm it.

Unfinished HTTP request heads and oversized Register messages used to be buffered whole by
an unauthenticated peer (hundreds of MB held); join tokens, new open-mode identities and API
keys could be tried without limit. Memory is measured on the real coordinator process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from phage.errors import Unauthenticated
from phage.node.connection import enroll
from phage.pki import NodeIdentity
from phage.pki.enroll import fetch_pinned_ca
from phage.protocol.v1 import phage_pb2 as pb
from phage.protocol.v1 import phage_pb2_grpc as pb_grpc
from phage.testing import CoordinatorProcess, wait_until
from tests.integration.conftest import job

# Guards and throttles act on sockets before the store is reached: they run once. Keyset paging is
# SQL and runs on both backends.
NEUTRAL = pytest.mark.backend_neutral

MB = 1024 * 1024


def _rss(coord: CoordinatorProcess) -> int:
    assert coord.proc is not None
    return int(psutil.Process(coord.proc.pid).memory_info().rss)


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    c = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=5.0).start()
    yield c
    c.stop()


def _closed_by_peer(sock: socket.socket) -> bytes | None:
    """What the server sent before closing, or None while the connection is still open."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except BlockingIOError:
        return None
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data or b"<closed>"


@NEUTRAL
def test_unfinished_header_blocks_hold_no_memory(coord: CoordinatorProcess) -> None:
    """300 connections each push ~800 KB of headers that never end: memory stays flat, all are closed."""
    base = _rss(coord)
    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", coord.http_port))
        s.setblocking(False)
        s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    header = b"X-Pad-%d: " + b"a" * 8000 + b"\r\n"
    sent = 0
    try:
        for r in range(100):
            for s in socks:
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    sent += s.send(header % r)
        grown = _rss(coord) - base
        replies: dict[int, bytes] = {}

        def all_closed() -> bool:
            for i, s in enumerate(socks):
                if i not in replies and (reply := _closed_by_peer(s)) is not None:
                    replies[i] = reply
            return len(replies) == len(socks)

        wait_until(all_closed, timeout=30, what="every oversized head to be closed")
    finally:
        for s in socks:
            s.close()
    assert grown < 24 * MB, f"coordinator grew {grown / MB:.0f} MB after {sent / MB:.0f} MB of headers"
    assert sum(b"431" in r for r in replies.values()) >= 250
    assert httpx.get(f"{coord.url}/healthz").status_code == 200


@NEUTRAL
def test_slow_or_silent_connections_are_closed(tmp_path: Path) -> None:
    """A head sent a byte at a time, or nothing at all, is cut off at the header deadline."""
    c = CoordinatorProcess(tmp_path / "c", env={"PHAGE_HTTP_HEADER_TIMEOUT_S": "1.5"}).start()
    try:
        silent = socket.create_connection(("127.0.0.1", c.http_port))
        slow = socket.create_connection(("127.0.0.1", c.http_port))
        for s in (silent, slow):
            s.setblocking(False)
        slow.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        while (reply := _closed_by_peer(slow)) is None and time.monotonic() - t0 < 10:
            slow.send(b"X-Drip: 1\r\n")  # keeps trickling, never finishes
            time.sleep(0.2)
        assert reply is not None and b"408" in reply
        assert wait_until(lambda: _closed_by_peer(silent), timeout=10, what="the silent socket closed")
        assert time.monotonic() - t0 < 6
        # a well-behaved keep-alive client on the same server is unaffected
        with httpx.Client(base_url=c.url) as client:
            assert all(client.get("/healthz").status_code == 200 for _ in range(3))
    finally:
        c.stop()


async def _register_raw(coord: CoordinatorProcess, request: pb.RegisterRequest) -> grpc.StatusCode:
    ca_pem = fetch_pinned_ca(coord.enroll_address, coord.info["ca_fingerprint"])
    async with grpc.aio.secure_channel(
        coord.enroll_address,
        grpc.ssl_channel_credentials(ca_pem),
        options=[("grpc.ssl_target_name_override", "phage-ca"), ("grpc.max_send_message_length", -1)],
    ) as ch:
        try:
            await pb_grpc.PhageCoordinatorStub(ch).Register(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@NEUTRAL
async def test_oversized_register_is_refused_before_it_is_buffered(coord: CoordinatorProcess) -> None:
    """Eight 16 MB Registers at once: refused by size, and the coordinator does not hold them."""
    base = _rss(coord)
    big = pb.RegisterRequest(join_token="guess", csr_pem=b"a" * (16 * MB))
    codes = await asyncio.gather(*[_register_raw(coord, big) for _ in range(8)])
    grown = _rss(coord) - base
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grown < 48 * MB, f"coordinator grew {grown / MB:.0f} MB after 128 MB of Register messages"


async def _join(coord: CoordinatorProcess, token: str, identity: NodeIdentity | None = None) -> None:
    await enroll(
        identity or NodeIdentity.generate(),
        enroll_address=coord.enroll_address,
        join_token=token,
        ca_fingerprint=coord.info["ca_fingerprint"],
        info={"name": "t", "sandboxes": ["none"]},
    )


async def _outcome(coord: CoordinatorProcess, token: str, identity: NodeIdentity | None = None) -> str:
    try:
        await _join(coord, token, identity)
    except Unauthenticated:
        return "unauthenticated"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name.lower()
    return "ok"


@NEUTRAL
async def test_join_token_guessing_is_throttled_per_source(tmp_path: Path) -> None:
    """After a burst of wrong tokens, the source is refused even with the right one, for a while."""
    env = {"PHAGE_JOIN_FAILURES_BURST": "5", "PHAGE_JOIN_FAILURES_PER_S": "0.01"}
    c = CoordinatorProcess(tmp_path / "c", env=env).start()
    try:
        guesses = [await _outcome(c, f"guess-{i}") for i in range(12)]
        assert guesses[:5] == ["unauthenticated"] * 5
        assert guesses[5:] == ["resource_exhausted"] * 7
        assert await _outcome(c, c.info["join_token"]) == "resource_exhausted"
    finally:
        c.stop()


@NEUTRAL
async def test_open_mode_registration_is_throttled_per_source(tmp_path: Path) -> None:
    """Open mode admits anyone, but one address cannot mint node identities without end."""
    env = {"PHAGE_ADMISSION": "open", "PHAGE_NEW_NODES_BURST": "4", "PHAGE_NEW_NODES_PER_S": "0.01"}
    c = CoordinatorProcess(tmp_path / "c", env=env).start()
    try:
        known = NodeIdentity.generate()
        first = [await _outcome(c, "", known)] + [await _outcome(c, "") for _ in range(5)]
        assert first == ["ok"] * 4 + ["resource_exhausted"] * 2
        assert await _outcome(c, "", known) == "ok"  # a known node re-registers freely
        with c.client() as http:
            assert len(http.get("/api/nodes").json()["nodes"]) == 4
    finally:
        c.stop()


@NEUTRAL
async def test_register_attempts_are_throttled_per_source(tmp_path: Path) -> None:
    """Any Register counts against the source's attempt budget, whatever its outcome."""
    env = {"PHAGE_REGISTER_BURST": "3", "PHAGE_REGISTER_PER_S": "0.01"}
    c = CoordinatorProcess(tmp_path / "c", env=env).start()
    try:
        outcomes = [await _outcome(c, c.info["join_token"]) for _ in range(5)]
        assert outcomes == ["ok"] * 3 + ["resource_exhausted"] * 2
    finally:
        c.stop()


@NEUTRAL
def test_api_key_guessing_is_throttled_per_source(tmp_path: Path) -> None:
    """Wrong API keys spend the source's budget; then every request from it gets 429 for a while."""
    env = {"PHAGE_AUTH_FAILURES_BURST": "5", "PHAGE_AUTH_FAILURES_PER_S": "0.01"}
    c = CoordinatorProcess(tmp_path / "c", env=env).start()
    try:
        with httpx.Client(base_url=c.url) as client:
            good = {"Authorization": f"Bearer {c.admin_key}"}
            assert client.get("/api/tasks", headers=good).status_code == 200  # success costs nothing
            codes = [
                client.get("/api/tasks", headers={"Authorization": f"Bearer phk_guess{i}"}).status_code
                for i in range(8)
            ]
            assert codes == [401] * 5 + [429] * 3
            refused = client.get("/api/tasks", headers=good)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert "failed API keys" in refused.json()["message"]
    finally:
        c.stop()


def test_paging_lists_every_task_of_a_batch_exactly_once(coord: CoordinatorProcess) -> None:
    """A batch submit gives its tasks one creation time; paging by cursor still lists each once."""
    with coord.client() as c:
        single = c.post("/api/tasks", json=job("first")).json()["id"]
        made = c.post("/api/tasks", json={**job("batch"), "count": 57}).json()["tasks"]
        ids = {single} | {t["id"] for t in made}
        assert len(ids) == 58
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(100):
            params: dict[str, object] = {"limit": 10}
            if cursor is not None:
                params["cursor"] = cursor
            page = c.get("/api/tasks", params=params).json()
            seen += [t["id"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids)  # every task, none twice
        bad = c.get("/api/tasks", params={"cursor": "yesterday"})
        assert bad.status_code == 400 and bad.json()["field"] == "cursor"


@NEUTRAL
def test_secrets_are_private_and_the_join_token_never_in_argv(
    coord: CoordinatorProcess, tmp_path: Path
) -> None:
    """coordinator.json and every secret file are 0600; the printed node line, pasted, keeps the
    token out of the node's argv; --token-file works and --token is refused."""
    import shlex
    import stat
    import sys

    from phage.coordinator.server import ServerInfo

    for name in ("coordinator.json", "admin-key", "join-token"):
        assert stat.S_IMODE(os.stat(coord.data_dir / name).st_mode) == 0o600, name
    info = coord.info
    token = info["join_token"]
    line = ServerInfo(**{**info, "admin_key": ""}).node_command()
    assert f"--token {token}" not in line and line.startswith(f"PHAGE_JOIN_TOKEN={token} phage node ")
    # paste the line as printed (phage = this interpreter's module) and look at the process it starts
    pasted = line.replace(" phage node ", f" {shlex.quote(sys.executable)} -m phage.client.cli node ", 1)
    pasted += f" --key-dir {shlex.quote(str(tmp_path / 'pasted'))} --sandbox none --heartbeat 0.5"
    env = {k: v for k, v in os.environ.items() if k != "PHAGE_JOIN_TOKEN"}
    node = subprocess.Popen(["sh", "-c", f"exec env {pasted}"], env=env, start_new_session=True)
    try:
        wait_until(lambda: _online(coord) >= 1, timeout=60, what="the pasted node online")
        argv = Path(f"/proc/{node.pid}/cmdline").read_bytes()
        assert b"phage.client.cli" in argv and token.encode() not in argv
    finally:
        _stop(node)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    base = [sys.executable, "-m", "phage.client.cli", "node", "--coordinator", coord.grpc_address]
    base += [
        "--enroll",
        coord.enroll_address,
        "--ca-fingerprint",
        info["ca_fingerprint"],
        "--sandbox",
        "none",
    ]
    by_file = subprocess.Popen(
        [*base, "--token-file", str(token_file), "--key-dir", str(tmp_path / "f"), "--heartbeat", "0.5"],
        env=env,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _online(coord) >= 2, timeout=60, what="the node with a token file online")
    finally:
        _stop(by_file)
    refused = subprocess.run([*base, "--token", token], env=env, capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"PHAGE_JOIN_TOKEN" in refused.stderr


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL if it has not gone after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _online(coord: CoordinatorProcess) -> int:
    with coord.client() as c:
        return sum(n["state"] == "online" for n in c.get("/api/nodes").json()["nodes"])


@NEUTRAL
def test_guard_keeps_ordinary_http_working(coord: CoordinatorProcess) -> None:
    """Big-but-allowed headers pass; pipelined requests on one connection all get answers."""
    with httpx.Client(base_url=coord.url) as client:
        assert client.get("/healthz", headers={"Cookie": "c" * 20_000}).status_code == 200
        try:
            refused = client.get("/healthz", headers={"Cookie": "c" * 40_000}).status_code
        except httpx.TransportError:  # closed while the client was still sending: refused as well
            refused = 431
        assert refused == 431
    with socket.create_connection(("127.0.0.1", coord.http_port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        s.settimeout(10)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {data.count(b'HTTP/1.1 200')} answers"
            data += chunk


@NEUTRAL
def test_connections_past_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    """With ``http_max_connections`` open, a new connection is closed at once, not queued."""
    env = {"PHAGE_HTTP_MAX_CONNECTIONS": "16", "PHAGE_HTTP_HEADER_TIMEOUT_S": "60"}
    c = CoordinatorProcess(tmp_path / "c", env=env).start()
    held = []
    try:
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", c.http_port))
            s.setblocking(False)
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", c.http_port))
        extra.setblocking(False)
        assert wait_until(lambda: _closed_by_peer(extra), timeout=5, what="the 17th connection closed")
        assert all(_closed_by_peer(s) is None for s in held)  # the first 16 are still open
        for s in held:
            s.close()
        held.clear()
        assert wait_until(lambda: httpx.get(f"{c.url}/healthz").status_code == 200, timeout=10)
    finally:
        for s in held:
            s.close()
        c.stop()
