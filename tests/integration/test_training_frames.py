"""Activation frames node to node: the ``train`` service of a node's data plane, over real mutual TLS.

A producer's frame is taken only for a VNode hosted in the generation it names, and only
from the node the coordinator placed that input's producer on (the TLS session proves who
sends); anything else is refused with a clear error and harms nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")

from phage.dataplane import DataPlaneServer, Peer, TLSIdentity
from phage.dataplane.transport import issue_identity
from phage.errors import InvalidInput, NotFound, PermissionDenied
from phage.node.training import VNodeHost, _Worker
from phage.pki.ca import CertificateAuthority
from phage.pki.identity import NodeIdentity
from phage.protocol.v1 import dataplane_pb2 as dp
from phage.protocol.v1 import training_pb2 as tpb
from phage.training.spec import load_spec_text

pytestmark = pytest.mark.backend_neutral  # node to node only; no coordinator store

SPEC = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()


@dataclass
class Consumer:
    """A node hosting ``mid`` (fed by ``stem``, placed on ``producer``), listening on loopback."""

    host: VNodeHost
    worker: _Worker
    server: DataPlaneServer
    producer: TLSIdentity
    stranger: TLSIdentity
    node_id: str


@pytest.fixture
async def consumer(tmp_path: Path) -> AsyncIterator[Consumer]:
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    me, producer, stranger = (issue_identity(ca, NodeIdentity.generate()) for _ in range(3))
    host = VNodeHost(me.node_id, lambda: None, tmp_path / "cache", identity=me, address="")  # type: ignore[arg-type,return-value]
    spec = json.dumps(load_spec_text(SPEC).raw)
    order = tpb.HostVNode(network_id="n1", vnode_id="mid", spec_json=spec, generation=3)
    worker = _Worker(host, order)
    host.hosted[("n1", "mid")] = worker
    host.routes[("n1", "mid")] = [tpb.VNodeRoute(vnode_id="stem", node_id=producer.node_id, generation=2)]
    server = DataPlaneServer(me, {"train": host.frames})
    await server.start()
    try:
        yield Consumer(host, worker, server, producer, stranger, me.node_id)
    finally:
        await server.stop(0)


def frame(
    seq: int, *, generation: int = 3, vnode: str = "mid", src: str = "stem", op: str = "activation"
) -> dp.Frame:
    return dp.Frame(
        service="train",
        op=op,
        strings={"network_id": "n1", "vnode_id": vnode, "from": src},
        ints={"seq": seq, "generation": generation},
        tensors=[dp.Tensor(name="frame", data=b"x%d" % seq)],
    )


async def test_the_producers_node_feeds_the_consumer_in_order(consumer: Consumer) -> None:
    peer = Peer(consumer.producer, consumer.server.address, consumer.node_id)
    try:
        for seq in range(5):
            await peer.request(frame(seq))
    finally:
        await peer.close()
    got = [consumer.worker.inbox.get_nowait() for _ in range(5)]
    assert [(f.vnode_id, f.seq, f.tensor) for f in got] == [("stem", s, b"x%d" % s) for s in range(5)]


@pytest.mark.parametrize(
    ("who", "request_", "error", "says"),
    [
        ("stranger", frame(0), PermissionDenied, "does not host 'stem'"),
        ("producer", frame(0, generation=2), NotFound, "generation 2"),
        ("producer", frame(0, vnode="out"), NotFound, "VNode out of n1"),
        ("producer", frame(0, src="neck"), PermissionDenied, "does not host 'neck'"),
        ("producer", frame(0, op="gradient"), InvalidInput, "no operation 'gradient'"),
    ],
    ids=["another pool node", "stale generation", "VNode not hosted here", "not its input", "unknown op"],
)
async def test_a_frame_the_consumer_should_not_take_is_refused_and_harms_nothing(
    consumer: Consumer, who: str, request_: dp.Frame, error: type[Exception], says: str
) -> None:
    identity = consumer.stranger if who == "stranger" else consumer.producer
    peer = Peer(identity, consumer.server.address, consumer.node_id)
    try:
        with pytest.raises(error, match=says):
            await peer.request(request_)
        await peer.request(frame(7))  # the producer's next frame still goes through
    except PermissionDenied:
        assert who == "stranger"  # a stranger's conversation stays refused
    finally:
        await peer.close()
    kept = [consumer.worker.inbox.get_nowait() for _ in range(consumer.worker.inbox.qsize())]
    assert [f.seq for f in kept] == ([] if who == "stranger" else [7])
