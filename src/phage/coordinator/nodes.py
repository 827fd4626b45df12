"""Nodes: enrollment, identity, heartbeats and lease renewal, and the admin's hand on a node.

Heartbeats touch memory only (the live pool); a flush writes the changed ones and the renewed
leases to the store once a second, so a large pool costs one transaction per second, not one
per heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from phage.coordinator.admission import Admission
from phage.coordinator.feed import EventBus
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.placement import ModelPlacement
from phage.coordinator.pool import LiveNode, LivePool
from phage.domain import Node, NodeState
from phage.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from phage.pki import CertificateAuthority, verify_signature
from phage.pki.identity import node_id_from_public_key, register_signing_payload
from phage.store import SqlStore

log = logging.getLogger("phage.coordinator")

REGISTER_CLOCK_SKEW_S = 300


@dataclass(frozen=True, slots=True)
class Registration:
    """What Register hands back to a node."""

    node_id: str
    client_cert_pem: bytes
    ca_cert_pem: bytes
    status: str = "accepted"
    """``pending`` while the node waits for an admin's approval."""


class NodeRegistry:
    """Who is in the pool and alive: register, authenticate, heartbeat, quarantine, remove."""

    def __init__(
        self,
        store: SqlStore,
        pool: LivePool,
        bus: EventBus,
        ledger: TaskLedger,
        admission: Admission,
        placement: ModelPlacement,
        *,
        lease_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.store, self.pool, self.bus, self.ledger = store, pool, bus, ledger
        self.admission, self.placement = admission, placement
        self.lease_s = lease_s
        self.clock = clock
        self.ca: CertificateAuthority | None = None
        """Signs node certificates; loaded from the data directory when the coordinator starts."""
        self._renewed: set[str] = set()
        """Attempts whose lease was renewed since the last flush to the store."""
        self.on_arrival: Callable[[LiveNode], Awaitable[None]] | None = None
        """Several replicas: a node that was talking to another replica now talks to this one (its open
        assignments are taken over from the store: ``Dispatcher.adopt``)."""

    # ---- enrollment and identity -------------------------------------------

    async def register(
        self,
        *,
        join_token: str,
        public_key: bytes,
        csr_pem: bytes,
        timestamp_ms: int,
        signature: bytes,
        info: dict[str, Any],
    ) -> Registration:
        """Admit a node that holds the join token and proves its identity key."""
        assert self.ca is not None
        self.admission.check_token(join_token)
        node_id = node_id_from_public_key(public_key)
        if abs(self.clock() * 1000 - timestamp_ms) > REGISTER_CLOCK_SKEW_S * 1000:
            raise InvalidInput(
                f"registration timestamp is more than {REGISTER_CLOCK_SKEW_S}s from the coordinator's clock",
                field="timestamp_unix_ms",
            )
        if not verify_signature(
            node_id, signature, register_signing_payload(csr_pem, timestamp_ms, join_token)
        ):
            raise Unauthenticated("identity signature does not verify", field="identity_signature")
        existing = await self.store.get_node(node_id)
        admitted = await self.admission.admit(node_id, existing)
        cert_pem, serial = self.ca.sign_node_csr(csr_pem, node_id)
        now = self.clock()
        node = Node(
            id=node_id,
            name=str(info.get("name") or info.get("hostname") or node_id[:8]),
            state=NodeState.ONLINE,
            registered_at=existing.registered_at if existing else now,
            last_heartbeat=now,
            max_concurrency=max(1, min(int(info.get("max_concurrency") or 4), 1024)),
            hardware=info,
            sandboxes=list(info.get("sandboxes", [])),
            loaded_model=str(info.get("loaded_model", "")),
            version=str(info.get("phage_version", "")),
            cert_serial=serial,
        )
        if existing is not None:  # re-registering keeps what the pool learned about this node
            node.trusted, node.reputation = existing.trusted, existing.reputation
            node.quarantined, node.quarantine_reason = existing.quarantined, existing.quarantine_reason
        admitted.apply(node)
        await self.store.upsert_node(node)
        live = self.pool.nodes.get(node_id)
        if live is None:
            live = self.pool.nodes[node_id] = LiveNode(node=node, last_seen=now, here=False)
        else:
            live.node, live.last_seen = node, now
        await self._arrived(live)
        self.bus.node(node_id, node.state.value, name=node.name, event="registered")
        log.info("node %s (%s) registered", node.name, node_id)
        status = "pending" if node.state is NodeState.PENDING else "accepted"
        return Registration(node_id, cert_pem, self.ca.cert_pem, status)

    def authenticate(self, cert_node_id: str | None, claimed: str) -> LiveNode:
        """The live node behind an mTLS peer, refusing one that speaks for another."""
        if not cert_node_id:
            raise Unauthenticated("a client certificate issued by this coordinator is required")
        if claimed and claimed != cert_node_id:
            raise PermissionDenied(
                f"certificate belongs to node {cert_node_id}; it cannot act as {claimed}", field="node_id"
            )
        live = self.pool.nodes.get(cert_node_id)
        if live is None or live.node.state.shut_out:
            why = f" ({live.node.state.value})" if live is not None else ""
            raise PermissionDenied(f"node {cert_node_id} is not a member of this pool{why}", field="node_id")
        return live

    def get(self, node_id: str) -> LiveNode:
        """A node the pool knows (removed ones excepted), or NotFound naming it."""
        live = self.pool.nodes.get(node_id)
        if live is None:
            raise NotFound(f"no node {node_id!r}", field="id")
        return live

    def all(self) -> list[LiveNode]:
        """Every node the pool knows, removed ones excepted."""
        return list(self.pool.nodes.values())

    async def seen(self, live: LiveNode) -> None:
        """The node spoke: it is alive (a node declared dead comes back)."""
        live.last_seen = self.clock()
        live.dirty = True
        await self._arrived(live)
        if live.node.state is NodeState.DEAD:
            live.node.state = NodeState.ONLINE
            await self.store.set_node_state(live.node.id, NodeState.ONLINE)
            self.bus.node(live.node.id, NodeState.ONLINE.value, name=live.node.name, event="revived")

    async def _arrived(self, live: LiveNode) -> None:
        if not live.here:
            # its assignments are taken over before any request of it is judged here (adoption skips
            # the ones already held, so two requests arriving together are harmless)
            if self.on_arrival is not None:
                await self.on_arrival(live)
            live.here = True

    async def apply_rows(self, rows: Sequence[Node]) -> None:
        """Several replicas: the node rows as the store has them now, after any replica's changes.

        Nodes connected elsewhere are mirrored as they are. For a node connected here, what an
        admin changed through another replica takes effect: quarantine and removal take its work
        away as they would here; drain, trust, caps and approval apply to its next request.
        """
        for i, row in enumerate(rows):
            if i and i % 500 == 0:
                await asyncio.sleep(0)  # a full re-read of a big pool: answer heartbeats in between
            live = self.pool.nodes.get(row.id)
            if row.state is NodeState.REMOVED:
                if live is not None and live.node.state is not NodeState.REMOVED:
                    await self.remove_here(row.id)
                continue
            if live is None:
                self.pool.nodes[row.id] = LiveNode(node=row, last_seen=row.last_heartbeat, here=False)
                continue
            if not live.here:
                live.node, live.last_seen = row, max(live.last_seen, row.last_heartbeat)
                continue
            newly_quarantined = row.quarantined and not live.node.quarantined
            node = live.node
            node.quarantined, node.quarantine_reason = row.quarantined, row.quarantine_reason
            node.draining, node.trusted, node.max_jobs = row.draining, row.trusted, row.max_jobs
            node.reputation = row.reputation
            if row.state.shut_out or (node.state is NodeState.PENDING and row.state is NodeState.ONLINE):
                node.state = row.state
            elif row.state is NodeState.DEAD and node.state is NodeState.ONLINE:
                # the leader's sweep buried it while it talks to us (its heartbeats reached the store
                # late): its next request revives it, in the store too, as for any node back from the dead
                node.state = NodeState.DEAD
            if newly_quarantined:
                await self.ledger.lose(list(live.attempts), f"node quarantined: {row.quarantine_reason}")
            live.wake.set()

    def apply_heartbeats(self, beats: Sequence[tuple[str, float]]) -> None:
        """Several replicas: when the nodes talking to other replicas were last heard (ages shown here)."""
        for node_id, heard in beats:
            live = self.pool.nodes.get(node_id)
            if live is not None and not live.here and heard > live.last_seen:
                live.last_seen = live.node.last_heartbeat = heard

    # ---- heartbeats ----------------------------------------------------------

    async def heartbeat(
        self, live: LiveNode, metrics: dict[str, Any], running: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Record liveness, renew leases; returns (cancel, unknown) assignment ids."""
        await self.seen(live)
        before = live.models()
        live.metrics = metrics
        if metrics.get("loaded_model") is not None:
            live.node.loaded_model = str(metrics["loaded_model"])
        self.placement.observe(live)
        if live.models() != before:
            live.wake.set()  # a model arrived: queued work for it may fit now
        lease = self.clock() + self.lease_s
        unknown: list[str] = []
        for aid in running:
            att = self.pool.attempts.get(aid)
            if att is None or att.node_id != live.node.id:
                unknown.append(aid)
            else:
                att.lease_expires_at = lease
                self._renewed.add(aid)
        cancels, live.cancels = live.cancels, []
        return cancels, unknown

    async def flush(self) -> None:
        """Write the heartbeats and lease renewals gathered since the last flush."""
        beats = []
        for live in self.pool.nodes.values():
            if live.dirty:
                live.dirty = False
                beats.append((live.node.id, live.last_seen, live.node.loaded_model))
        leases = [(a.id, a.lease_expires_at) for aid in self._renewed if (a := self.pool.attempts.get(aid))]
        self._renewed.clear()
        try:
            await self.store.record_heartbeats(beats, leases)
        except Exception:  # the database is away: keep them for the next flush
            for node_id, _, _ in beats:
                if node_id in self.pool.nodes:
                    self.pool.nodes[node_id].dirty = True
            self._renewed.update(aid for aid, _ in leases)
            raise

    # ---- admin ---------------------------------------------------------------

    async def quarantine(self, node_id: str, reason: str) -> None:
        """Give a node no more work until an admin releases it; its open work goes elsewhere."""
        await self.store.set_quarantine(node_id, True, reason)
        live = self.pool.nodes.get(node_id)
        if live is not None:
            live.node.quarantined, live.node.quarantine_reason = True, reason
            await self.ledger.lose(list(live.attempts), f"node quarantined: {reason}")
            name = live.node.name
        else:
            name = node_id
        log.warning("node %s quarantined: %s", name, reason)
        self.bus.node(node_id, "quarantined", reason=reason)

    async def release(self, node_id: str) -> None:
        """Lift a node's quarantine (admin)."""
        await self.store.set_quarantine(node_id, False, "")
        live = self.pool.nodes.get(node_id)
        if live is not None:
            live.node.quarantined, live.node.quarantine_reason = False, ""
            live.wake.set()
        self.bus.node(node_id, "released")

    async def remove(self, node_id: str) -> None:
        """Shut a node out: its certificate is refused from now on and its work requeued."""
        await self.store.set_node_state(node_id, NodeState.REMOVED)
        await self.remove_here(node_id)
        self.bus.node(node_id, NodeState.REMOVED.value)

    async def remove_here(self, node_id: str) -> None:
        """Forget a removed node in this replica's memory, requeueing the work it held here."""
        live = self.pool.nodes.pop(node_id, None)
        if live is not None:
            await self.ledger.lose(list(live.attempts), "node removed by an admin")
            live.wake.set()
