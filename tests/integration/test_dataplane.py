"""The data plane over real gRPC + mTLS on loopback: a chain of stage servers, identity checks, failover."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from phage.dataplane import DataPlaneServer, Peer, TLSIdentity  # noqa: E402
from phage.dataplane.transport import issue_identity  # noqa: E402
from phage.domain.blocks import BlockRange, Server, ShardedModel  # noqa: E402
from phage.errors import NotFound, Unavailable  # noqa: E402
from phage.node.chain import ChainSession, Hop, Sampling, generate_tokens  # noqa: E402
from phage.node.engines.tinymodel import make_tiny_model  # noqa: E402
from phage.node.stage import StageModel  # noqa: E402
from phage.node.stage_service import StageHandler  # noqa: E402
from phage.pki.ca import CertificateAuthority  # noqa: E402
from phage.pki.identity import NodeIdentity  # noqa: E402
from phage.protocol.v1 import dataplane_pb2 as dp  # noqa: E402
from phage.scheduler.blocks import chain  # noqa: E402

PROMPT = [5, 6, 7, 8, 9, 10]
STEPS = 24


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny8", layers=8, name="tiny8")


@pytest.fixture(scope="module")
def reference(model8: Path) -> list[int]:
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(model8).eval()
    out = whole.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    return [int(t) for t in out[0, len(PROMPT) :]]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("pki"))


@dataclass
class Pool:
    """Stage servers on loopback and a router over them."""

    model: ShardedModel
    client: TLSIdentity
    servers: dict[str, tuple[DataPlaneServer, Server]]

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
    for a, b, standby in ranges:
        ident = issue_identity(ca, NodeIdentity.generate())
        stage = StageModel(model8, BlockRange(a, b))
        server = DataPlaneServer(ident, {"stage": StageHandler({"tiny8": stage}, output_hook=hook)})  # type: ignore[arg-type]
        await server.start()
        servers[ident.node_id] = (server, Server(ident.node_id, BlockRange(a, b), standby=standby))
    return Pool(model, issue_identity(ca, NodeIdentity.generate()), servers)


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
async def test_a_chain_over_mtls_gives_the_whole_models_tokens(
    ca: CertificateAuthority, model8: Path, reference: list[int], ranges: list[tuple[int, int]]
) -> None:
    pool = await start_pool(ca, model8, [(a, b, False) for a, b in ranges])
    try:
        async with ChainSession("tiny8", pool.client, pool.route) as session:
            tokens = await collect(generate_tokens(session, PROMPT, Sampling(max_tokens=STEPS)))
            assert len(session.hops) == len(ranges)
        assert tokens == reference
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
        assert tokens == reference
    finally:
        await stop_pool(pool)


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
