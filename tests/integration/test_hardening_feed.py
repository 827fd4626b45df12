"""The live feed shows each key only what it may see, closes when its key is revoked, and
opens from a browser with a single-use ticket instead of the API key in the URL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from phage.node.connection import enroll
from phage.pki import NodeIdentity
from phage.testing import CoordinatorProcess
from tests.integration.conftest import job


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    c = CoordinatorProcess(tmp_path_factory.mktemp("feed") / "coordinator", heartbeat_s=5.0).start()
    yield c
    c.stop()


def _user(coord: CoordinatorProcess, name: str) -> tuple[str, str]:
    with coord.client() as c:
        made = c.post("/api/keys", json={"name": name, "role": "user"}).json()
    return made["id"], made["key"]


def _ticket(coord: CoordinatorProcess, key: str) -> str:
    resp = httpx.post(f"{coord.url}/api/feed/ticket", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["ticket"])


def _ws_url(coord: CoordinatorProcess, query: str = "") -> str:
    return coord.url.replace("http://", "ws://") + "/api/feed" + query


async def _drain(ws: ClientConnection, until: float) -> list[dict[str, Any]]:
    """Every event that arrives before ``until`` (monotonic)."""
    out = []
    while (left := until - time.monotonic()) > 0:
        try:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return out


async def _close_code(url: str, **kw: Any) -> int | None:
    async with websockets.connect(url, **kw) as ws:
        try:
            while True:
                await ws.recv()
        except websockets.exceptions.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def test_user_sees_only_own_tasks_and_no_node_events(coord: CoordinatorProcess) -> None:
    alice_id, alice = _user(coord, "alice")
    _, bob = _user(coord, "bob")
    async with (
        websockets.connect(_ws_url(coord, f"?ticket={_ticket(coord, alice)}")) as alice_ws,
        websockets.connect(
            _ws_url(coord), additional_headers={"Authorization": f"Bearer {coord.admin_key}"}
        ) as admin_ws,
    ):
        assert json.loads(await alice_ws.recv())["role"] == "user"
        assert json.loads(await admin_ws.recv())["role"] == "admin"
        async with httpx.AsyncClient(base_url=coord.url) as http:
            as_bob = {"Authorization": f"Bearer {bob}"}
            bobs = (await http.post("/api/tasks", json=job("b"), headers=as_bob)).json()["id"]
            as_alice = {"Authorization": f"Bearer {alice}"}
            alices = (await http.post("/api/tasks", json=job("a"), headers=as_alice)).json()["id"]
            await http.delete(f"/api/tasks/{bobs}", headers=as_bob)
        await enroll(  # a node joining: a node event
            NodeIdentity.generate(),
            enroll_address=coord.enroll_address,
            join_token=coord.info["join_token"],
            ca_fingerprint=coord.info["ca_fingerprint"],
            info={"name": "feed-node"},
        )
        until = time.monotonic() + 2.0
        seen_by_alice, seen_by_admin = await asyncio.gather(_drain(alice_ws, until), _drain(admin_ws, until))
    admin_ids = {e.get("id") for e in seen_by_admin}
    assert {bobs, alices} <= admin_ids
    assert any(e["type"] == "node" for e in seen_by_admin)
    assert seen_by_alice, "alice saw nothing of her own task"
    assert {e["id"] for e in seen_by_alice} == {alices}
    assert all(e["type"] == "task" and e.get("owner", alice_id) == alice_id for e in seen_by_alice)


async def test_ticket_is_single_use_and_the_key_never_rides_in_the_url(coord: CoordinatorProcess) -> None:
    _, carol = _user(coord, "carol")
    ticket = _ticket(coord, carol)
    async with websockets.connect(_ws_url(coord, f"?ticket={ticket}")) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
    assert await _close_code(_ws_url(coord, f"?ticket={ticket}")) == 4401  # spent
    assert await _close_code(_ws_url(coord, f"?key={carol}")) == 4401  # a key in the URL is not read
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{coord.url}/api/feed/ticket")).status_code == 401


async def test_socket_closes_when_its_key_is_revoked(coord: CoordinatorProcess) -> None:
    dave_id, dave = _user(coord, "dave")
    async with websockets.connect(_ws_url(coord, f"?ticket={_ticket(coord, dave)}")) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        with coord.client() as admin:
            assert admin.delete(f"/api/keys/{dave_id}").status_code == 200
        t0 = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5.0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.monotonic() - t0 < 2.0


def test_feed_tickets_expire(tmp_path: Path) -> None:
    from phage.coordinator.feed_api import FeedTickets
    from phage.errors import Unauthenticated

    now = [100.0]
    tickets = FeedTickets(ttl_s=30, limit=2, clock=lambda: now[0])
    t = tickets.issue("Bearer k")
    now[0] += 31
    with pytest.raises(Unauthenticated):
        tickets.redeem(t)
    fresh = tickets.issue("Bearer k")
    assert tickets.redeem(fresh) == "Bearer k"
