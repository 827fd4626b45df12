"""Admission: who may join the pool, with what trust, and what an admitted node may take.

Four modes (``--admission``, ``PHAGE_ADMISSION``):

=========  =====================================================  =========================
mode       who gets in                                            trust of a new node
=========  =====================================================  =========================
token      anyone with the join token (the default)               trusted
allowlist  node ids listed in sandrun's ``workers.json``         trusted
approval   anyone with the join token, ``pending`` until an       as the admin decides
           admin approves
open       anyone, no token                                       untrusted
=========  =====================================================  =========================

Why allowlist mode needs no join token: sandrun's workers are admitted by their Ed25519 key
alone, and Register already proves the node holds that key (it signs its CSR with it), so a
token would add a second secret to distribute without keeping anyone else out. A token the
node sends anyway is ignored.

The workers file is re-read when its modification time, size or inode changes (checked every
second and on every Register): a key that leaves the file is shut out at once — its RPCs are
refused, its open work is requeued, and ``/api/nodes`` shows it ``refused`` — and comes back
by registering again once it is listed again. A file that does not parse keeps the last good
list (an editor's half-written save must not shut the pool out); a missing file admits nobody.

A removed node stays removed, except in approval mode, where registering again puts it back
in ``pending`` for an admin to decide; a rejected node can never rejoin with that identity.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phage.coordinator.feed import EventBus
from phage.coordinator.ledger import TaskLedger
from phage.coordinator.pool import LiveNode, LivePool
from phage.domain import Node, NodeState
from phage.domain.models import MAX_HELD_ASSIGNMENTS
from phage.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from phage.store import SqlStore

log = logging.getLogger("phage.admission")

WATCH_PERIOD_S = 1.0
MAX_JOBS_LIMIT = 1024


class AdmissionMode(enum.StrEnum):
    """Who may join the pool."""

    TOKEN = "token"
    ALLOWLIST = "allowlist"
    APPROVAL = "approval"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class WorkerEntry:
    """One allowlisted worker, as sandrun's ``workers.json`` lists it."""

    worker_id: str
    """Base64 of the raw Ed25519 public key: phage's node id."""
    endpoint: str = ""
    """sandrun's worker URL; phage nodes dial out, so it is only shown (``/pool``)."""
    max_concurrent_jobs: int | None = None
    """Caps the node's concurrent assignments; None: the node's own ``--concurrency``."""


def check_max_jobs(value: Any, field: str) -> int | None:
    """A concurrency cap from untrusted input: None, or an integer from 1 to :data:`MAX_JOBS_LIMIT`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS_LIMIT:
        raise InvalidInput(f"{field} must be an integer from 1 to {MAX_JOBS_LIMIT}", field=field)
    return value


def parse_workers(data: Any) -> dict[str, WorkerEntry]:
    """sandrun's ``workers.json`` (a list of ``{worker_id, endpoint?, max_concurrent_jobs?}``), checked."""
    if not isinstance(data, list):
        raise InvalidInput("workers file must be a JSON list of workers", field="workers")
    out: dict[str, WorkerEntry] = {}
    for i, item in enumerate(data):
        where = f"workers[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object", field=where)
        wid = item.get("worker_id")
        if not isinstance(wid, str) or not wid.strip():
            raise InvalidInput(f"{where}.worker_id must be a non-empty string", field=f"{where}.worker_id")
        endpoint = item.get("endpoint", "")
        if not isinstance(endpoint, str):
            raise InvalidInput(f"{where}.endpoint must be a string", field=f"{where}.endpoint")
        cap = check_max_jobs(item.get("max_concurrent_jobs"), f"{where}.max_concurrent_jobs")
        out[wid.strip()] = WorkerEntry(wid.strip(), endpoint, cap)
    return out


class WorkersFile:
    """The allowlist on disk, re-read only when the file changes (one ``stat`` per check)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.workers: dict[str, WorkerEntry] = {}
        self._seen: tuple[int, int, int] | None = None
        self.error = ""
        """Why the last read was refused (the previous list stays in force)."""

    def check(self) -> bool:
        """Re-read the file if it changed; True when the allowlist did."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._seen == (0, 0, 0):
                return False
            self._seen = (0, 0, 0)
            if self.workers:
                log.warning("workers file %s is gone: no node is admitted", self.path)
            changed, self.workers = bool(self.workers), {}
            return changed
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            workers = parse_workers(json.loads(self.path.read_bytes()))
        except (OSError, ValueError, InvalidInput) as exc:
            self.error = getattr(exc, "message", str(exc))
            log.error("workers file %s refused, keeping the previous list: %s", self.path, self.error)
            return False
        self.error = ""
        changed, self.workers = workers != self.workers, workers
        if changed:
            log.info("workers file %s: %d workers allowlisted", self.path, len(workers))
        return changed


@dataclass(frozen=True, slots=True)
class Admitted:
    """What registering gives a node: its state, trust and limits."""

    state: NodeState
    trusted: bool
    draining: bool
    max_jobs: int | None

    def apply(self, node: Node) -> None:
        """Write the decision onto the node record about to be stored."""
        node.state, node.trusted = self.state, self.trusted
        node.draining, node.max_jobs = self.draining, self.max_jobs


def admission_state(node: Node) -> str:
    """The node's standing with the admission policy, as the API shows it."""
    if node.state in (NodeState.ONLINE, NodeState.DEAD):
        return "admitted"
    return node.state.value


class Admission:
    """The admission policy in force, and the admin actions on it (approve, reject, drain, caps)."""

    def __init__(
        self,
        mode: str,
        workers_path: Path,
        *,
        store: SqlStore,
        pool: LivePool,
        ledger: TaskLedger,
        bus: EventBus,
        clock: Callable[[], float],
    ) -> None:
        self.mode = AdmissionMode(mode)
        self.workers = WorkersFile(workers_path)
        self.store, self.pool, self.ledger, self.bus, self.clock = store, pool, ledger, bus, clock
        self.join_token = ""
        """The pool's join token: read from the data directory when the coordinator starts."""

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Read the workers file and shut out recovered nodes it no longer lists."""
        if self.mode is AdmissionMode.ALLOWLIST:
            self.workers.check()
            if not self.workers.path.exists():
                log.warning("allowlist mode: %s does not exist yet; no node is admitted", self.workers.path)
            await self.reconcile()

    async def watch(self) -> None:
        """Apply changes to the workers file without a restart."""
        if self.mode is not AdmissionMode.ALLOWLIST:
            return
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            try:
                if self.workers.check():
                    await self.reconcile()
            except Exception:  # keep watching even if one pass fails
                log.exception("applying the workers file failed")

    async def reconcile(self) -> None:
        """Make every known node agree with the allowlist: refuse the unlisted, update caps."""
        for live in list(self.pool.nodes.values()):
            node = live.node
            if node.state.shut_out:
                continue
            entry = self.workers.workers.get(node.id)
            if entry is None:
                await self._shut_out(live, NodeState.REFUSED, "no longer in the workers file")
            elif entry.max_concurrent_jobs != node.max_jobs:
                node.max_jobs = entry.max_concurrent_jobs
                await self.store.set_admission(node.id, max_jobs=node.max_jobs)
                live.wake.set()

    # ---- registering -------------------------------------------------------

    def check_token(self, join_token: str) -> None:
        """Refuse a wrong join token where this mode needs one."""
        if self.mode in (AdmissionMode.ALLOWLIST, AdmissionMode.OPEN):
            return
        if not hmac.compare_digest(join_token.encode(), self.join_token.encode()):
            raise Unauthenticated("join token is not valid for this pool", field="join_token")

    async def admit(self, node_id: str, existing: Node | None) -> Admitted:
        """Decide how a node that proved its identity enters; raise if it may not."""
        if existing is not None and existing.state is NodeState.REJECTED:
            raise PermissionDenied(
                f"node {node_id} was rejected by an admin of this pool; it cannot rejoin with this identity",
                field="node_id",
            )
        if (
            existing is not None
            and existing.state is NodeState.REMOVED
            and self.mode is not AdmissionMode.APPROVAL
        ):
            raise PermissionDenied(f"node {node_id} was removed from this pool", field="node_id")
        trusted = existing.trusted if existing is not None else self.mode is not AdmissionMode.OPEN
        draining = existing.draining if existing is not None else False
        max_jobs = existing.max_jobs if existing is not None else None
        state = NodeState.ONLINE
        if self.mode is AdmissionMode.ALLOWLIST:
            if self.workers.check():
                await self.reconcile()
            entry = self.workers.workers.get(node_id)
            if entry is None:
                raise PermissionDenied(
                    f"node {node_id} is not in this pool's workers file ({self.workers.path.name})",
                    field="node_id",
                )
            max_jobs = entry.max_concurrent_jobs
        elif self.mode is AdmissionMode.APPROVAL and (
            existing is None or existing.state in (NodeState.PENDING, NodeState.REMOVED)
        ):
            state = NodeState.PENDING
        return Admitted(state, trusted, draining, max_jobs)

    # ---- dispatch ----------------------------------------------------------

    @staticmethod
    def dispatch_limit(live: LiveNode, max_tasks: int) -> int:
        """How many more assignments this node may be handed now (0: none).

        A draining node takes nothing new. A capped node (workers file or admin) never holds
        more than its cap. A trusted node decides (its slots, plus as many short tasks queued
        beside them as it expects to finish soon: ``phage.node.window``), up to
        ``MAX_HELD_ASSIGNMENTS`` or twice its concurrency, whichever is more. An untrusted node
        holds at most twice its concurrency: whether its work needs a second copy is decided as
        it is claimed, from the node's record so far, and a node that took a pool's whole queue
        at once would have every task copied before its first result could earn it any trust.
        """
        node = live.node
        if node.draining or node.state is not NodeState.ONLINE:
            return 0
        held = len(live.attempts)
        if node.max_jobs is not None:
            return max(0, min(max_tasks, node.max_jobs - held))
        cap = 2 * node.max_concurrency
        if node.trusted:
            cap = max(cap, MAX_HELD_ASSIGNMENTS)
        return min(max_tasks, max(0, cap - held))

    # ---- admin -------------------------------------------------------------

    def get(self, node_id: str) -> LiveNode:
        """A node the pool knows (removed ones excepted), or NotFound naming it."""
        live = self.pool.nodes.get(node_id)
        if live is None:
            raise NotFound(f"no node {node_id!r}", field="id")
        return live

    async def approve(self, node_id: str, *, trusted: bool = True, max_jobs: int | None = None) -> LiveNode:
        """Let a pending node work (as trusted or untrusted); on an admitted node, update its trust."""
        live = self.get(node_id)
        node = live.node
        if node.state.shut_out:
            raise Conflict(f"node {node_id} is {node.state.value}; it cannot be approved", field="id")
        self._check_cap_settable(max_jobs)
        values: dict[str, Any] = {"trusted": trusted}
        if max_jobs is not None:
            values["max_jobs"] = max_jobs
        if node.state is NodeState.PENDING:
            values["state"] = NodeState.ONLINE
        await self.store.set_admission(node_id, **values)
        node.trusted = trusted
        if max_jobs is not None:
            node.max_jobs = max_jobs
        if node.state is NodeState.PENDING:
            node.state = NodeState.ONLINE
            live.last_seen = max(live.last_seen, self.clock())
            log.info("node %s (%s) approved (%s)", node.name, node_id, "trusted" if trusted else "untrusted")
            self.bus.node(node_id, NodeState.ONLINE.value, name=node.name, event="approved", trusted=trusted)
        live.wake.set()
        return live

    async def reject(self, node_id: str) -> LiveNode:
        """Refuse a node for good: its RPCs and every later Register with its identity."""
        live = self.get(node_id)
        if live.node.state is not NodeState.REJECTED:
            await self._shut_out(live, NodeState.REJECTED, "rejected by an admin")
        return live

    async def set_draining(self, node_id: str, draining: bool) -> LiveNode:
        """Drain (finish what it holds, take no more) or undrain a node."""
        live = self.get(node_id)
        await self.store.set_admission(node_id, draining=draining)
        live.node.draining = draining
        live.wake.set()
        self.bus.node(node_id, live.node.state.value, name=live.node.name, draining=draining)
        return live

    async def set_trusted(self, node_id: str, trusted: bool) -> LiveNode:
        """Mark a node trusted or untrusted (untrusted results are re-verified); no state change."""
        live = self.get(node_id)
        await self.store.set_admission(node_id, trusted=trusted)
        live.node.trusted = trusted
        return live

    async def set_max_jobs(self, node_id: str, max_jobs: int | None) -> LiveNode:
        """Cap (or uncap, with None) how many assignments a node holds at once."""
        live = self.get(node_id)
        self._check_cap_settable(max_jobs, explicit=True)
        await self.store.set_admission(node_id, max_jobs=max_jobs)
        live.node.max_jobs = max_jobs
        live.wake.set()
        return live

    def _check_cap_settable(self, max_jobs: int | None, *, explicit: bool = False) -> None:
        if (max_jobs is not None or explicit) and self.mode is AdmissionMode.ALLOWLIST:
            raise Conflict(
                "in allowlist mode a node's max_concurrent_jobs comes from the workers file; change it there",
                field="max_concurrent_jobs",
            )

    async def _shut_out(self, live: LiveNode, state: NodeState, reason: str) -> None:
        """Refuse a node's RPCs from now on and requeue its open work; it stays listed."""
        node = live.node
        await self.store.set_admission(node.id, state=state)
        node.state = state
        await self.ledger.lose(list(live.attempts), f"node {state.value}: {reason}")
        live.wake.set()
        log.warning("node %s (%s) %s: %s", node.name, node.id, state.value, reason)
        self.bus.node(node.id, state.value, name=node.name, reason=reason)
