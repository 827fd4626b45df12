"""The data plane over real gRPC + mTLS on loopback: a chain of stage servers, identity checks, failover."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from phage.dataplane import DataPlaneServer, Peer, TLSIdentity  # noqa: E402
from phage.dataplane.chain import ChainSession, Hop, generate_tokens  # noqa: E402
from phage.dataplane.checks import CheckPolicy, Evidence, Verifier  # noqa: E402
from phage.dataplane.sampling import Sampling  # noqa: E402
from phage.dataplane.stage_frames import forward_frame  # noqa: E402
from phage.dataplane.transport import direct, issue_identity  # noqa: E402
from phage.domain.blocks import BlockRange, Server, ShardedModel  # noqa: E402
from phage.errors import NotFound, Unavailable  # noqa: E402
from phage.node.engines.tinymodel import make_tiny_model  # noqa: E402
from phage.node.stage import StageModel  # noqa: E402
from phage.node.stage_service import StageHandler  # noqa: E402
from phage.pki.ca import CertificateAuthority  # noqa: E402
from phage.pki.identity import NodeIdentity  # noqa: E402
from phage.protocol.v1 import dataplane_pb2 as dp  # noqa: E402
from phage.scheduler.blocks import chain  # noqa: E402

pytestmark = pytest.mark.backend_neutral  # stage servers over mutual TLS; no coordinator store

PROMPT = [5, 6, 7, 8, 9, 10]
STEPS = 24


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny8", layers=8, name="tiny8")


@pytest.fixture(scope="module")
def whole(model8: Path) -> object:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model8).eval()


@pytest.fixture(scope="module")
def reference(whole: object) -> list[int]:
    out = whole.generate(  # type: ignore[attr-defined]
        torch.tensor([PROMPT]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False
    )
    return [int(t) for t in out[0, len(PROMPT) :]]


def greedy_from(whole: object, tokens: list[int], step: int) -> bool:
    """Whether every token from ``step`` on is the whole model's greedy pick after the ones before it."""
    with torch.no_grad():
        for j in range(step, len(tokens)):
            logits = whole(torch.tensor([PROMPT + tokens[:j]])).logits  # type: ignore[operator]
            if int(logits[0, -1].argmax()) != tokens[j]:
                return False
    return True


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("pki"))


@dataclass
class Pool:
    """Stage servers on loopback and a router over them."""

    model: ShardedModel
    client: TLSIdentity
    servers: dict[str, tuple[DataPlaneServer, Server]]
    handlers: dict[str, StageHandler] = field(default_factory=dict)

    async def route(self, start: int, avoid: Collection[str]) -> list[Hop]:
        live = [s for _, s in self.servers.values()]
        picked = chain(self.model, live, avoid=avoid, start=start)
        hops, pos = [], start
        for s in picked:
            hops.append(Hop(s.node_id, self.servers[s.node_id][0].address, s.blocks, pos))
            pos = s.blocks.end
        return hops


async def start_pool(
    ca: CertificateAuthority, model8: Path, ranges: list[tuple[int, int, bool]], hook: object = None
) -> Pool:
    model = ShardedModel(name="tiny8", checkpoint=str(model8), num_blocks=8, bytes_per_block=1)
    servers: dict[str, tuple[DataPlaneServer, Server]] = {}
    handlers: dict[str, StageHandler] = {}
    for a, b, standby in ranges:
        ident = issue_identity(ca, NodeIdentity.generate())
        stage = StageModel(model8, BlockRange(a, b))
        handler = handlers[ident.node_id] = StageHandler(
            {"tiny8": stage},
            dial=direct(ident),
            node_id=ident.node_id,
            output_hook=hook,  # type: ignore[arg-type]
        )
        server = DataPlaneServer(ident, {"stage": handler})
        await server.start()
        servers[ident.node_id] = (server, Server(ident.node_id, BlockRange(a, b), standby=standby))
    return Pool(model, issue_identity(ca, NodeIdentity.generate()), servers, handlers)


async def stop_pool(pool: Pool) -> None:
    for server, _ in pool.servers.values():
        await server.stop(0)


async def collect(it: AsyncIterator[int]) -> list[int]:
    return [t async for t in it]


@pytest.mark.parametrize(
    "ranges",
    [
        [(0, 8)],
        [(0, 4), (4, 8)],
        [(0, 3), (3, 8)],
        [(0, 2), (2, 5), (5, 8)],
        [(0, 1), (1, 4), (4, 6), (6, 8)],
    ],
    ids=lambda r: "+".join(f"{a}:{b}" for a, b in r),
)
@pytest.mark.parametrize("push", [True, False], ids=["node-to-node", "through-the-caller"])
async def test_a_chain_over_mtls_gives_the_whole_models_tokens(
    ca: CertificateAuthority, model8: Path, reference: list[int], ranges: list[tuple[int, int]], push: bool
) -> None:
    pool = await start_pool(ca, model8, [(a, b, False) for a, b in ranges])
    try:
        async with ChainSession("tiny8", pool.client, pool.route, push=push) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            assert len(session.hops) == len(ranges)
            # every decode step went hop to hop when it could (the prompt's prefill goes through the caller)
            assert session.pushed_steps == (STEPS - 1 if push else 0)
        assert tokens == reference
        assert all(len(h.inbox) == 0 for h in pool.handlers.values())  # nothing left waiting
    finally:
        await stop_pool(pool)


async def test_a_dead_middle_hop_is_replaced_and_the_output_is_unchanged(
    ca: CertificateAuthority, model8: Path, reference: list[int]
) -> None:
    pool = await start_pool(ca, model8, [(0, 3, False), (3, 6, False), (3, 6, True), (6, 8, False)])
    try:
        async with ChainSession("tiny8", pool.client, pool.route) as session:
            tokens: list[int] = []
            async for t in generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)):
                tokens.append(t)
                if len(tokens) == STEPS // 2:
                    middle = session.hops[1].node_id
                    await pool.servers[middle][0].stop(0)
            assert session.failovers == 1 and middle in session.failed
            assert session.hops[1].node_id != middle
            # every decode step went node to node but the one that failed over, which the caller finished
            assert session.pushed_steps == STEPS - 1
        assert tokens == reference
    finally:
        await stop_pool(pool)


async def test_nodes_that_cannot_reach_each_other_fall_back_to_the_caller(
    ca: CertificateAuthority, model8: Path, reference: list[int]
) -> None:
    pool = await start_pool(ca, model8, [(0, 3, False), (3, 6, False), (6, 8, False)])
    first = next(n for n, (_, s) in pool.servers.items() if s.blocks.start == 0)
    # The first node cannot reach any other (a firewall between them): its pushes fail.
    nowhere = issue_identity(ca, NodeIdentity.generate())
    pool.handlers[first].dial = lambda _address, node_id: Peer(nowhere, "127.0.0.1:9", node_id)
    try:
        async with ChainSession("tiny8", pool.client, pool.route) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            # the first decode step's second hop was fed by the caller, then the rest went through it
            assert session.push is False and session.pushed_steps == 0
            assert session.failovers == 0 and not session.failed  # nobody is blamed for it
        assert tokens == reference
    finally:
        await stop_pool(pool)


@pytest.mark.parametrize(
    "ranges", [[(0, 8)], [(0, 3), (3, 8)], [(0, 2), (2, 5), (5, 8)]], ids=["1", "2", "3"]
)
async def test_a_chain_decoding_on_its_own_samples_as_the_caller_would(
    ca: CertificateAuthority, model8: Path, ranges: list[tuple[int, int]]
) -> None:
    # The last hop picks each token with the caller's seeded generator and hands it to the
    # first; the caller repeats every pick. Same seed, same tokens as the caller alone.
    pool = await start_pool(ca, model8, [(a, b, False) for a, b in ranges])
    sampling = Sampling(max_tokens=STEPS, temperature=0.9, top_p=0.95, seed=11)
    try:
        runs = {}
        for push in (True, False):
            async with ChainSession("tiny8", pool.client, pool.route, push=push) as session:
                runs[push] = await collect(generate_tokens(session, PROMPT, sampling))
                assert session.pushed_steps == (STEPS - 1 if push else 0)
                assert session.steps == STEPS  # the prompt, then one step per token but the last
        assert runs[True] == runs[False]
        assert len(set(runs[True])) > 3  # really sampled, not one token over and over
    finally:
        await stop_pool(pool)


async def test_a_last_hop_that_picks_another_token_is_caught_and_the_caller_drives(
    ca: CertificateAuthority, model8: Path, reference: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from phage.node import stage_service

    real = stage_service._StageConversation._pick
    monkeypatch.setattr(
        stage_service._StageConversation, "_pick", lambda self, s, logits: real(self, s, logits) + 1
    )
    pool = await start_pool(ca, model8, [(0, 4, False), (4, 8, False)])
    seeded = Sampling(max_tokens=STEPS, temperature=0.9, seed=5)
    try:
        async with ChainSession("tiny8", pool.client, pool.route) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            assert session.push is False  # the caller drives the rest of the session
            assert session.failovers == 0 and not session.failed  # a disagreement blames nobody
        assert tokens == reference
        runs = []
        for push in (True, False):  # sampled: the step not taken does not take its draw either
            async with ChainSession("tiny8", pool.client, pool.route, push=push) as session:
                runs.append(await collect(generate_tokens(session, PROMPT, seeded)))
        assert runs[0] == runs[1]
    finally:
        await stop_pool(pool)


async def test_a_last_hop_that_hands_on_another_token_than_it_reports_is_caught(
    ca: CertificateAuthority, model8: Path, reference: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from phage.node import stage_service

    monkeypatch.setattr(stage_service, "_token_tensor", lambda token: torch.tensor([token + 1]))
    pool = await start_pool(ca, model8, [(0, 4, False), (4, 8, False)])
    try:
        async with ChainSession("tiny8", pool.client, pool.route) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            assert session.push is False and session.failovers == 0
        assert tokens == reference  # the first hop said which token it was handed; the caller checked
    finally:
        await stop_pool(pool)


async def test_a_session_stopped_mid_ring_goes_on_from_its_record(
    ca: CertificateAuthority, model8: Path, reference: list[int]
) -> None:
    # The hops ran a step ahead of the last token the caller took; the session's next step
    # must not see it (every hop is routed afresh from the record first).
    pool = await start_pool(ca, model8, [(0, 3, False), (3, 8, False)])
    try:
        async with ChainSession("tiny8", pool.client, pool.route) as session:
            stop_at = reference[10]
            sampling = Sampling(max_tokens=STEPS, eos_token_id=stop_at)
            tokens = await collect(generate_tokens(session, PROMPT, sampling))
            assert tokens == reference[: reference.index(stop_at)]
            logits = await session.forward([stop_at])
            assert int(logits.argmax()) == reference[reference.index(stop_at) + 1]
    finally:
        await stop_pool(pool)


async def test_a_sessions_conversation_is_never_silently_reopened(
    ca: CertificateAuthority, model8: Path
) -> None:
    # A node that restarts between two steps of a session has lost the session's cache: its
    # caller must hear so (and fail over), not have the next step run on a fresh, empty cache.
    pool = await start_pool(ca, model8, [(0, 8, False)])
    ((node_id, (server, _)),) = pool.servers.items()
    session = direct(pool.client)(server.address, node_id)
    stateless = Peer(pool.client, server.address, node_id)  # each request stands alone: may reopen
    restarted = DataPlaneServer(server.identity, {"stage": pool.handlers[node_id]}, port=server.port)
    try:
        for peer in (session, stateless):
            await peer.request(forward_frame("tiny8", [torch.tensor(PROMPT)], 0, 8))
        await server.stop(0)
        await restarted.start()
        for _ in range(100):  # each conversation's reader sees its call end
            if session._call is None and stateless._call is None:
                break
            await asyncio.sleep(0.02)
        step = forward_frame("tiny8", [torch.tensor([11])], 0, 8)
        with pytest.raises(Unavailable, match=re.escape(f"node {node_id}")):
            await session.request(step)
        with pytest.raises(Unavailable):  # and so on, for every later request
            await session.request(step)
        await stateless.request(step)
    finally:
        await session.close()
        await stateless.close()
        await restarted.stop(0)


async def test_each_end_checks_the_others_node_id(ca: CertificateAuthority, model8: Path) -> None:
    pool = await start_pool(ca, model8, [(0, 8, False)])
    other = CertificateAuthority.load_or_create(model8.parent / "other-ca")
    try:
        ((server, info),) = pool.servers.values()
        frame = dp.Frame(service="stage", op="forward", strings={"model": "nope"}, tensors=[])
        # The right node, the right CA: the request reaches the handler (which refuses the model).
        peer = Peer(pool.client, server.address, info.node_id)
        with pytest.raises(NotFound, match="no blocks"):
            await peer.request(dp.Frame(service="stage", op="forward", strings={"model": "nope"}))
        await peer.close()
        # Another node id at that address: the TLS name check fails, nothing is sent.
        impostor = Peer(pool.client, server.address, NodeIdentity.generate().node_id)
        with pytest.raises(Unavailable):
            await impostor.request(frame, wait_s=5)
        await impostor.close()
        # A certificate from another CA: the server refuses the handshake.
        stranger = Peer(issue_identity(other, NodeIdentity.generate()), server.address, info.node_id)
        with pytest.raises(Unavailable):
            await stranger.request(frame, wait_s=5)
        await stranger.close()
    finally:
        await stop_pool(pool)


def noise(scale: float) -> object:
    def hook(output: object) -> object:
        return output + torch.randn_like(output) * scale * output.abs().max()  # type: ignore[attr-defined]

    return hook


async def policy_for(
    pool: Pool, rate: float, caught: list[Evidence], untrusted: Callable[[str], bool] = lambda _n: True
) -> CheckPolicy:
    async def find(blocks: BlockRange, start: int, avoid: Collection[str]) -> Verifier | None:
        for node_id, (server, s) in pool.servers.items():
            reported = {e.node_id for e in caught}
            if node_id not in avoid | reported and s.blocks.start <= start and s.blocks.end == blocks.end:
                return Verifier(node_id, server.address, s.blocks)
        return None

    async def report(evidence: Evidence) -> None:
        caught.append(evidence)

    return CheckPolicy(rate=rate, untrusted=untrusted, find_verifier=find, report=report)


async def test_honest_nodes_pass_a_thousand_checked_steps(ca: CertificateAuthority, model8: Path) -> None:
    pool = await start_pool(ca, model8, [(0, 4, False), (0, 4, True), (4, 8, False), (4, 8, True)])
    caught: list[Evidence] = []
    checks = await policy_for(pool, 1.0, caught)
    checked = 0
    try:
        for session_no in range(10):
            async with ChainSession("tiny8", pool.client, pool.route, checks=checks) as session:
                sampling = Sampling(max_tokens=50, temperature=0.8, seed=session_no)
                assert len(await collect(generate_tokens(session, PROMPT, sampling))) > 0
                assert session.checker is not None
                checked += session.checker.checked
                assert session.failovers == 0
    finally:
        await stop_pool(pool)
    assert checked >= 1000
    assert caught == []


async def test_a_node_adding_noise_is_caught_with_evidence_and_the_output_is_right_from_then_on(
    ca: CertificateAuthority, model8: Path, whole: object
) -> None:
    honest = await start_pool(ca, model8, [(0, 4, False), (4, 8, True)])
    liar = await start_pool(ca, model8, [(4, 8, False)], hook=noise(0.01))
    liar_id = next(iter(liar.servers))
    pool = Pool(honest.model, honest.client, {**honest.servers, **liar.servers})
    caught: list[Evidence] = []
    # The liar is untrusted (an open pool's node); the others are trusted, so they verify it.
    checks = await policy_for(pool, 0.25, caught, untrusted=lambda n: n == liar_id)
    try:
        async with ChainSession("tiny8", pool.client, pool.route, checks=checks) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            assert session.checker is not None
        (evidence,) = caught
        # Its unchecked steps before that may have tipped a token (noise on the logits); from the
        # caught step on, the honest node that took over has the right cache: every token is the
        # whole model's greedy pick after the tokens before it.
        assert greedy_from(whole, tokens, evidence.step) and len(tokens) == STEPS
        assert evidence.node_id == liar_id and evidence.blocks == "4:8"
        assert evidence.max_abs_diff > evidence.tolerance
        assert liar_id in session.failed
        # caught at its first sampled check: every check of a noisy node fails
        assert session.checker.checked <= STEPS
    finally:
        await stop_pool(pool)


async def test_a_lying_verifier_is_outvoted_by_a_referee(
    ca: CertificateAuthority, model8: Path, reference: list[int]
) -> None:
    first = await start_pool(ca, model8, [(0, 4, False), (4, 8, False)])
    liar = await start_pool(ca, model8, [(4, 8, True)], hook=noise(0.01))
    last = await start_pool(ca, model8, [(4, 8, True)])
    liar_id = next(iter(liar.servers))
    honest_hop = next(n for n, (_, s) in first.servers.items() if s.blocks.start == 4)
    pool = Pool(first.model, first.client, {**first.servers, **liar.servers, **last.servers})
    caught: list[Evidence] = []
    checks = await policy_for(pool, 1.0, caught)  # everyone untrusted: a disagreement needs a referee
    try:
        async with ChainSession("tiny8", pool.client, pool.route, checks=checks) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            assert session.failovers == 0 and session.hops[-1].node_id == honest_hop
        assert tokens == reference
        assert [e.node_id for e in caught] == [liar_id]  # the liar, caught while verifying an honest hop
    finally:
        await stop_pool(pool)


async def test_a_cancelled_session_ends_on_every_hop_even_under_anyio(
    ca: CertificateAuthority, model8: Path
) -> None:
    """A client hanging up cancels the chain's task through anyio, which cancels every later await too."""
    import asyncio

    import anyio

    pool = await start_pool(ca, model8, [(0, 3, False), (3, 6, False), (6, 8, False)])
    handlers = list(pool.handlers.values())
    try:
        async with anyio.create_task_group() as group:

            async def run() -> None:
                async with ChainSession("tiny8", pool.client, pool.route) as session:
                    async for _t in generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS * 100)):
                        if all(h.open_sessions == 1 for h in handlers):
                            group.cancel_scope.cancel()  # as Starlette does when the client leaves

            group.start_soon(run)
        for _ in range(100):
            if all(h.open_sessions == 0 for h in handlers):
                break
            await asyncio.sleep(0.05)
        assert [h.open_sessions for h in handlers] == [0, 0, 0]
    finally:
        await stop_pool(pool)
