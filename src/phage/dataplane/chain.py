"""Generation through a chain of nodes that together hold every block of a sharded model.

The caller (like Petals' client) drives the chain: each step sends the new
token ids to the first hop, each hop's output to the next, and samples the next
token from the last hop's logits. Each hop keeps its blocks' attention cache for
the session (one data-plane conversation per hop).

Checked activations: with a :class:`CheckPolicy`, a sample of untrusted hops'
steps is recomputed elsewhere (:mod:`phage.dataplane.checks`); a mismatch counts as a
failure of that hop, after the evidence is reported.

Failover: the session remembers every input it sent each hop. When a hop fails,
the rest of the chain is routed again from that hop's first block, avoiding the
failed node, and the remembered inputs are replayed onto the new hops in the same
chunks as the first time — which rebuilds their caches exactly — before the step
is retried. The caller sees one uninterrupted sequence of tokens.

Pushed steps: when every hop has a direct address and none of them is to be checked,
each decode step goes hop to hop: each hop sends its output straight to the next hop
(``push_to``/``from``, see :mod:`phage.node.stage_inbox`) while still answering the caller
with it, so a step's path is N + 1 messages instead of 2N and the caller keeps the
same record for failover. A hop that fails mid-step is failed over as above; a push that does not
arrive (nodes that cannot reach each other) moves the session to caller-driven steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from phage.dataplane.checks import Checker, CheckPolicy, Mismatch
from phage.dataplane.relay import RELAY_ADDRESS
from phage.dataplane.stage_frames import forward_frame, push_frame
from phage.dataplane.tensors import tensor_from_pb, tensor_to_pb
from phage.dataplane.transport import Dial, RemoteConversation, TLSIdentity, close_peers, direct
from phage.domain.blocks import BlockRange
from phage.errors import Conflict, InputMissing, PermissionDenied, PhageError, Unavailable
from phage.protocol.v1 import dataplane_pb2 as dp

log = logging.getLogger("phage.chain")

FEED_WAIT_S = 10.0
"""How long the caller tries to hand a hop an input the hop before could not push to it."""


@dataclass(frozen=True, slots=True)
class Hop:
    """One node of a chain: where to reach it, the blocks it holds, and the block it starts at."""

    node_id: str
    address: str
    blocks: BlockRange
    start: int


Router = Callable[[int, Collection[str]], Awaitable[list[Hop]]]
"""``route(start, avoid)``: hops covering blocks ``start`` to the model's end, not using ``avoid``."""


@dataclass
class _Live:
    hop: Hop
    peer: RemoteConversation
    sent: list[Any] = field(default_factory=list)
    """Every input chunk this hop has run for the session, in order (replayed on failover)."""


class ChainSession:
    """One generation session through a chain; ``async with`` closes every hop's conversation."""

    def __init__(
        self,
        model: str,
        identity: TLSIdentity,
        route: Router,
        *,
        max_failovers: int = 4,
        checks: CheckPolicy | None = None,
        dial: Dial | None = None,
        push: bool = True,
    ) -> None:
        self.model = model
        self.push = push
        """Whether hops may push outputs to each other (turned off when a push fails)."""
        self.chain_id = uuid.uuid4().hex
        """Names this session to its hops when they push to each other."""
        self.steps = 0
        """Steps run (the prompt's, then one per token)."""
        self.pushed_steps = 0
        """Steps that went hop to hop (the rest went through the caller)."""
        self.dial = dial or direct(identity)
        """How a hop (or a verifier) is reached: directly, or through the coordinator's relay."""
        self.checker = Checker(checks, self.dial, model) if checks is not None else None
        self.identity = identity
        self.route = route
        self.max_failovers = max_failovers
        self.failed: set[str] = set()
        self.failovers = 0
        self._hops: list[_Live] = []
        self.hop_overheads: list[float] = []
        """Per request: round-trip time minus the hop's own compute time (serialisation, TLS, gRPC)."""

    async def __aenter__(self) -> ChainSession:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def hops(self) -> list[Hop]:
        """The chain in use now."""
        return [h.hop for h in self._hops]

    def _peer(self, hop: Hop) -> RemoteConversation:
        return self.dial(hop.address, hop.node_id)

    def _frame(self, live: _Live, chunks: list[Any]) -> dp.Frame:
        return forward_frame(self.model, chunks, live.hop.start, live.hop.blocks.end)

    async def _request(self, live: _Live, chunks: list[Any]) -> list[Any]:
        t0 = time.perf_counter()
        reply = await live.peer.request(self._frame(live, chunks))
        self.hop_overheads.append(time.perf_counter() - t0 - reply.ints.get("compute_us", 0) / 1e6)
        return [tensor_from_pb(t) for t in reply.tensors]

    def _can_push(self) -> bool:
        """Whether this step may go hop to hop: several hops, all reachable directly, none checked.

        Only decode steps (one new position) are pushed: each node waits for its pushed input
        as long as every node before it computes, which for a long prompt's prefill on slow
        nodes could outlast that wait, while the message or two it saves are nothing beside it.
        """
        if not self.push or len(self._hops) < 2:
            return False
        if any(live.hop.address == RELAY_ADDRESS for live in self._hops):
            return False
        checker = self.checker
        return checker is None or not any(checker.may_check(live.hop.node_id) for live in self._hops)

    async def _pushed_step(self, x: Any) -> tuple[int, Any]:
        """One step with each hop pushing its output to the next: (hops done, the next hop's input).

        Every hop done: (number of hops, the last hop's output). Otherwise the chain from
        the hop ``i`` that failed (failed over) or went unfed (no one is blamed, and the
        session's later steps go through the caller) is routed again, its inputs replayed,
        and the caller runs the rest of the step from hop ``i`` itself.
        """
        lives = list(self._hops)
        step = self.steps  # names this step to the hops, unique within the session
        calls = []
        for i, live in enumerate(lives):
            frame = self._frame(live, [] if i else [x])
            frame.strings["session"] = self.chain_id
            frame.ints["step"] = step
            if i:
                frame.strings["from"] = lives[i - 1].hop.node_id
            if i + 1 < len(lives):
                frame.strings["push_to"] = lives[i + 1].hop.node_id
                frame.strings["push_address"] = lives[i + 1].hop.address
            calls.append(asyncio.ensure_future(live.peer.request(frame)))
        t0 = time.perf_counter()
        compute_s = 0.0
        stop: tuple[int, PhageError | str] | None = None
        """Where the step stopped: a hop that failed (its error), or one left unfed (why)."""
        try:
            for i, (live, call) in enumerate(zip(lives, calls, strict=True)):
                try:
                    reply = await call
                except (InputMissing, PermissionDenied) as exc:
                    if not i:
                        raise
                    stop = i, f"hop {live.hop.node_id}: {exc.message}"
                    break
                except Unavailable as exc:
                    stop = i, exc
                    break
                live.sent.append(x)
                compute_s += reply.ints.get("compute_us", 0) / 1e6
                (x,) = [tensor_from_pb(t) for t in reply.tensors]
                if reply.strings.get("push_error") and i + 1 < len(lives):
                    why = reply.strings["push_error"]
                    problem = await self._feed(lives[i + 1].hop, calls[i + 1], step, x, why)
                    if problem is not None:
                        stop = i + 1, problem
                        break
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        if stop is None:
            self.pushed_steps += self.push  # not when the caller had to feed a hop
            added = (time.perf_counter() - t0 - compute_s) / len(lives)
            self.hop_overheads.extend([added] * len(lives))
            return len(lives), x
        index, problem = stop
        if isinstance(problem, str):
            await self._unpushed(index, problem)
        else:
            await self._failed(index, problem)
        return index, x

    async def _feed(
        self, hop: Hop, waiting: asyncio.Future[dp.Frame], step: int, x: Any, why: str
    ) -> PhageError | str | None:
        """Hand ``hop`` the input of ``step`` the hop before could not push to it; None once it has it.

        Its request for the step (``waiting``) waits for that input with its cache intact, so
        the step goes on; later steps go through the caller (the two nodes may be unable to
        reach each other). A hop that is gone fails here and is failed over (the push failed
        because of it: later steps still go node to node); any other refusal ends pushing for
        the session and the rest of the step goes through the caller.
        """
        if waiting.done() and not waiting.cancelled():
            failed = waiting.exception()
            if isinstance(failed, Unavailable) and not isinstance(failed, InputMissing):
                return failed  # it died while the hop before tried to reach it
        frame = push_frame(tensor_to_pb(x), step, self.chain_id, self.identity.node_id)
        peer = self.dial(hop.address, hop.node_id)
        try:
            await peer.request(frame, wait_s=FEED_WAIT_S)
        except Conflict:
            pass  # the push arrived after all: the step has its input
        except InputMissing as exc:
            return exc.message
        except Unavailable as exc:
            return exc
        except PhageError as exc:
            return exc.message
        finally:
            await close_peers([peer])
        log.warning("a %s hop could not push to the next (%s); the caller relays instead", self.model, why)
        self.push = False
        return None

    async def _unpushed(self, index: int, why: str) -> None:
        """A push did not arrive: this session's steps go through the caller from now on."""
        log.warning(
            "hops of a %s session cannot push to each other (%s); the caller relays instead", self.model, why
        )
        self.push = False
        await self._reroute(index)

    async def _failed(self, index: int, exc: PhageError) -> None:
        """Hop ``index`` failed: avoid its node and route the chain again from its first block."""
        live = self._hops[index]
        if self.failovers >= self.max_failovers:
            raise exc
        self.failovers += 1
        self.failed.add(live.hop.node_id)
        log.warning("hop %s failed (%s); rerouting blocks %s:", live.hop.node_id, exc, live.hop.start)
        await self._reroute(index)

    async def _reroute(self, index: int) -> None:
        """Replace hops ``index``… by a fresh route from that hop's first block, replaying their inputs."""
        start = self._hops[index].hop.start if self._hops else 0
        history = self._hops[index].sent if self._hops else []
        leaving = [live.peer for live in self._hops[index:]]
        del self._hops[index:]
        await close_peers(leaving)
        hops = await self.route(start, self.failed)
        if not hops:
            raise Unavailable(f"no chain of live nodes covers blocks {start}: of {self.model!r}")
        fresh = [_Live(h, self._peer(h)) for h in hops]
        self._hops.extend(fresh)
        chunks = list(history)
        for live in fresh:
            if not chunks:
                break
            live.sent = list(chunks)
            chunks = await self._request(live, chunks)

    async def forward(self, token_ids: list[int]) -> Any:
        """Run new positions through the chain; the logits of the last one."""
        import torch

        if not self._hops:
            await self._reroute(0)
        x: Any = torch.tensor(token_ids, dtype=torch.int64)
        self.steps += 1
        i = 0
        if len(token_ids) == 1 and self._can_push():  # decode steps: a prompt's prefill waits longer
            i, x = await self._pushed_step(x)
        while i < len(self._hops):
            live = self._hops[i]
            try:
                (out,) = await self._request(live, [x])
                if self.checker is not None and self.checker.wants(live.hop.node_id):
                    hop = live.hop
                    await self.checker.check(
                        hop.node_id, hop.blocks, hop.start, live.sent, x, out, avoid=self.failed
                    )
            except (Unavailable, Mismatch) as exc:
                await self._failed(i, exc)
                continue  # the new hop i has its cache back; send this step again
            live.sent.append(x)
            x = out
            i += 1
        return x

    async def close(self) -> None:
        """End every hop's conversation (each drops the session's cache), even when cancelled."""
        peers = [live.peer for live in self._hops]
        self._hops.clear()
        await close_peers(peers)


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is picked: greedy at temperature 0, else seeded sampling."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    top_p: float | None = None
    eos_token_id: int | None = None


async def generate_tokens(session: ChainSession, prompt: list[int], sampling: Sampling) -> AsyncIterator[int]:
    """Yield generated token ids until ``max_tokens`` or the end-of-sequence token."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
    logits = await session.forward(prompt)
    for _ in range(sampling.max_tokens):
        token = pick(logits, sampling, generator)
        if sampling.eos_token_id is not None and token == sampling.eos_token_id:
            return
        yield token
        logits = await session.forward([token])


def pick(logits: Any, sampling: Sampling, generator: Any) -> int:
    """The next token from one position's logits."""
    import torch

    if sampling.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, index = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
