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

Decoding on its own (:meth:`ChainSession.ring`, what :func:`generate_tokens` uses where hops may
push): the last hop also picks each next token and pushes it to the first hop, so the caller is off
every token's path; it reads along, keeps the record, and repeats every pick to check it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from phage.dataplane.checks import Checker, CheckPolicy, Mismatch
from phage.dataplane.relay import RELAY_ADDRESS
from phage.dataplane.sampling import MIN_TEMPERATURE, Sampling, new_generator, pick, put_sampling
from phage.dataplane.stage_frames import forward_frame, push_frame
from phage.dataplane.tensors import tensor_from_pb, tensor_to_pb
from phage.dataplane.transport import Dial, Peer, RemoteConversation, TLSIdentity, close_peers, direct
from phage.domain.blocks import BlockRange
from phage.errors import Conflict, InputMissing, PermissionDenied, PhageError, Unavailable
from phage.protocol.v1 import dataplane_pb2 as dp

log = logging.getLogger("phage.chain")

FEED_WAIT_S = 10.0
"""How long the caller tries to hand a hop an input the hop before could not push to it."""
RING_WINDOW = 2
"""Steps of a ring posted to its hops ahead of the one being read: the caller is never on its path."""
RING_WAIT_S = 60.0
"""How long the caller waits for every hop's answer to one step of a ring."""


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
        self._stale = False
        """Whether hops ran steps the session's record lacks (a ring stopped early): reroute first."""
        self.hop_overheads: list[float] = []
        """Per request: round-trip time minus the hop's own compute time (serialisation, TLS, gRPC)."""
        self.ring_overheads: list[float] = []
        """Per hop of a ring's step: the first node's time from one step to the next, less every
        node's compute, over the hops — the ring's own price, without the caller reading along."""

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

    def _direct(self) -> bool:
        """Whether the hops may hand steps to each other: all reachable directly, none to be checked."""
        if not self.push or not self._hops:
            return False
        if any(live.hop.address == RELAY_ADDRESS for live in self._hops):
            return False
        checker = self.checker
        return checker is None or not any(checker.may_check(live.hop.node_id) for live in self._hops)

    def _can_push(self) -> bool:
        """Whether this step may go hop to hop: several hops, all reachable directly, none checked.

        Only decode steps (one new position) are pushed: each node waits for its pushed input
        as long as every node before it computes, which for a long prompt's prefill on slow
        nodes could outlast that wait, while the message or two it saves are nothing beside it.
        """
        return len(self._hops) >= 2 and self._direct()

    def can_ring(self) -> bool:
        """Whether the chain may decode on its own (:meth:`ring`): as for pushing, on direct conversations."""
        return self._direct() and all(isinstance(live.peer, Peer) for live in self._hops)

    async def ring(
        self, token: int, sampling: Sampling, generator: Any, budget: int
    ) -> AsyncGenerator[int, None]:
        """The tokens after ``token``, at most ``budget``, as the chain decodes on its own.

        Each hop pushes its output to the next and the last hop picks the next token (with
        the caller's sampling settings and generator state) and pushes it to the first, so
        a token's path is one message per hop with no round trip to the caller. The caller
        keeps the steps of the next ``RING_WINDOW`` tokens posted to every hop, reads each
        hop's answer for the session's record (failover replays it), and picks every token
        again itself from the reported logits: a last hop that picks otherwise ends the ring.

        The ring stops early when a hop fails (failed over), a push does not arrive, or a pick
        disagrees (both: the caller drives the rest); every hop is then routed afresh from
        the record, and the caller goes on with ``forward([the last token yielded])``.
        """
        import torch

        lives = list(self._hops)
        first = self.steps + 1  # step ids as forward's: the session's step count once it is done
        feed: Any = torch.tensor([token], dtype=torch.int64)
        posted: list[list[asyncio.Future[dp.Frame]]] = []
        done = 0
        mark = time.perf_counter()
        cycle: tuple[float, float] | None = None
        """When the first node started the last step, and the step's compute on every node."""
        try:
            while done < budget:
                while len(posted) < min(done + RING_WINDOW, budget):
                    j = len(posted)
                    posted.append(
                        await self._post_ring_step(lives, first, j, budget, feed, sampling, generator)
                    )
                replies = await self._ring_replies(lives, posted[done])
                if done and replies[0].ints.get("token_in") != int(feed):
                    got = replies[0].ints.get("token_in")
                    raise _RingStop(None, f"its first hop was handed token {got}, not {int(feed)}")
                logits = tensor_from_pb(replies[-1].tensors[-1])
                state = generator.get_state() if sampling.temperature >= MIN_TEMPERATURE else None
                picked = pick(logits, sampling, generator)
                if replies[-1].ints.get("token") != picked:
                    if state is not None:
                        generator.set_state(state)  # the step is not taken: neither is its draw
                    said = replies[-1].ints.get("token")
                    raise _RingStop(None, f"its last hop picked token {said} where the caller picks {picked}")
                inputs = [feed, *(tensor_from_pb(r.tensors[-1]) for r in replies[:-1])]
                for live, x in zip(lives, inputs, strict=True):
                    live.sent.append(x)
                self.steps += 1
                self.pushed_steps += 1
                now = time.perf_counter()
                compute_s = sum(r.ints.get("compute_us", 0) for r in replies) / 1e6
                self.hop_overheads.extend([(now - mark - compute_s) / len(lives)] * len(lives))
                mark = now
                started = replies[0].ints.get("started_us", 0) / 1e6
                if cycle is not None and started:  # token to token on the first node, less the blocks' time
                    self.ring_overheads.append((started - cycle[0] - cycle[1]) / len(lives))
                cycle = (started, compute_s)
                done += 1
                feed = torch.tensor([picked], dtype=torch.int64)
                yield picked
        except _RingStop as stop:
            _settle([f for step in posted[done:] for f in step])
            posted = posted[:done]
            await self._ring_broken(stop)
        finally:
            ahead = [f for step in posted[done:] for f in step]
            _settle(ahead)
            if ahead:
                self._stale = True  # hops ran steps the record lacks: route afresh before the next

    async def _post_ring_step(
        self,
        lives: list[_Live],
        first: int,
        j: int,
        budget: int,
        feed: Any,
        sampling: Sampling,
        generator: Any,
    ) -> list[asyncio.Future[dp.Frame]]:
        """Post ring step ``j`` (session step ``first + j``) to every hop; the futures of their answers."""
        n = len(lives)
        futures = []
        for i, live in enumerate(lives):
            fed = not i and not j  # the ring's first input comes from the caller, later ones go round
            frame = self._frame(live, [feed] if fed else [])
            frame.strings["session"] = self.chain_id
            frame.ints["step"] = first + j
            if not fed:
                frame.strings["from"] = lives[i - 1].hop.node_id
            if i + 1 < n or j + 1 < budget:  # the last step's token goes nowhere
                after = lives[(i + 1) % n].hop
                frame.strings["push_to"] = after.node_id
                frame.strings["push_address"] = after.address
            if i + 1 == n:
                put_sampling(frame, sampling, generator if not j else None)
            peer = live.peer
            assert isinstance(peer, Peer)
            try:
                futures.append(await peer.post(frame))
            except PhageError as exc:
                _settle(futures)
                dead = isinstance(exc, Unavailable)
                raise _RingStop(live.hop.node_id if dead else None, exc.message) from None
        return futures

    async def _ring_replies(
        self, lives: list[_Live], futures: list[asyncio.Future[dp.Frame]]
    ) -> list[dp.Frame]:
        """Every hop's answer for one ring step (or :class:`_RingStop`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RING_WAIT_S
        while True:
            for live, f in zip(lives, futures, strict=True):
                if not f.done():
                    break  # a later hop's complaint (its input never came) may be this one's fault
                problem = _problem(f)
                if problem is not None:
                    raise _RingStop(live.hop.node_id if problem[0] else None, problem[1])
            else:
                return [f.result() for f in futures]
            for live, f in zip(lives, futures, strict=True):  # a node that is gone need not be waited for
                problem = _problem(f) if f.done() else None
                if problem is not None and problem[0]:
                    raise _RingStop(live.hop.node_id, problem[1])
            pending = [f for f in futures if not f.done()]
            left = deadline - loop.time()
            if left <= 0:  # a hop waiting for its input would have said so by now: the first silent one hangs
                node = next(live.hop.node_id for live, f in zip(lives, futures, strict=True) if not f.done())
                raise _RingStop(node, f"hop {node} did not answer within {RING_WAIT_S:g} s")
            await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    async def _ring_broken(self, stop: _RingStop) -> None:
        """The ring stopped: route every hop afresh from the record; the caller drives from here.

        A hop whose node is gone is failed over (later steps may go round again); for any
        other reason the caller drives the session's remaining steps itself.
        """
        blame, why = stop.blame, stop.why
        if blame is not None:
            if self.failovers >= self.max_failovers:
                raise Unavailable(f"hop {blame} failed ({why}) and failovers are exhausted")
            self.failovers += 1
            self.failed.add(blame)
            log.warning("hop %s failed mid-ring (%s); rerouting the chain", blame, why)
        else:
            log.warning("a %s chain stopped decoding on its own (%s); the caller drives it", self.model, why)
            self.push = False
        await self._reroute(0)

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
        self._stale = False
        self.chain_id = uuid.uuid4().hex  # a late push for the old chain can never feed the new one
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
        for k, live in enumerate(fresh):
            if not chunks:
                break
            live.sent = list(chunks)
            try:
                chunks = await self._request(live, chunks)
            except Unavailable as exc:  # a node that died (or hangs) since it was routed
                await self._failed(index + k, exc)
                return

    async def forward(self, token_ids: list[int]) -> Any:
        """Run new positions through the chain; the logits of the last one."""
        import torch

        if not self._hops or self._stale:
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


async def generate_tokens(
    session: ChainSession, prompt: list[int], sampling: Sampling
) -> AsyncGenerator[int, None]:
    """Yield generated token ids until ``max_tokens`` or the end-of-sequence token.

    The prompt's prefill and the first token go through the caller; then, where the
    chain allows, the chain decodes on its own (:meth:`ChainSession.ring`), and if that
    stops short the caller drives the remaining steps itself, from where it stopped.
    """
    async with contextlib.aclosing(_tokens(session, prompt, sampling)) as tokens:
        async for token in tokens:
            if sampling.eos_token_id is not None and token == sampling.eos_token_id:
                return
            yield token


async def _tokens(session: ChainSession, prompt: list[int], sampling: Sampling) -> AsyncGenerator[int, None]:
    """``max_tokens`` tokens, whatever they are (the consumer stops at the end-of-sequence token)."""
    generator = new_generator(sampling.seed)
    token = pick(await session.forward(prompt), sampling, generator)
    made = 0
    while True:
        yield token
        made += 1
        if made < sampling.max_tokens and session.can_ring():
            async with contextlib.aclosing(
                session.ring(token, sampling, generator, sampling.max_tokens - made)
            ) as ring:
                async for token in ring:
                    yield token
                    made += 1
        if made >= sampling.max_tokens:
            return
        token = pick(await session.forward([token]), sampling, generator)


class _RingStop(Exception):
    """A ring cannot go on: ``blame`` is the node whose conversation broke (None: nobody's fault)."""

    def __init__(self, blame: str | None, why: str) -> None:
        super().__init__(why)
        self.blame = blame
        self.why = why


def _problem(answer: asyncio.Future[dp.Frame]) -> tuple[bool, str] | None:
    """What stops the ring in a hop's finished answer to one of its steps: (the node is gone, why),
    or None when the answer is fine."""
    if answer.cancelled():
        return True, "the conversation was closed"
    exc = answer.exception()
    if exc is not None:  # the conversation broke: the node died or left
        return isinstance(exc, Unavailable) and not isinstance(exc, InputMissing), str(exc)
    reply = answer.result()
    if reply.error:
        return False, reply.error
    if reply.strings.get("push_error"):
        return False, reply.strings["push_error"]
    return None


def _settle(futures: list[asyncio.Future[dp.Frame]]) -> None:
    """Stop waiting for these answers (and take note of any that failed, so none goes unread)."""
    for f in futures:
        if f.done() and not f.cancelled():
            f.exception()
        else:
            f.cancel()
