"""Placement balances nodes by the work of their VNodes, not by how many they host."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from phage.coordinator.training import TrainingService
from phage.coordinator.training_types import HostFacts, Order
from phage.domain.networks import TrainingConfig
from phage.scheduler.segments import segments
from phage.scheduler.vnodes import Host, Unhosted, place
from phage.store import SqlStore, sqlite_url
from phage.store.blobs import BlobStore
from phage.training.spec import parse_spec

pytest.importorskip("numpy")


def wide(width: int) -> dict[str, Any]:
    hidden = [{"type": "linear", "out_features": width}, {"type": "activation", "fn": "relu"}]
    return {
        "input": {"shape": [64]},
        "classes": 10,
        "vnodes": [
            {"id": "stem", "blocks": hidden},
            {"id": "mid", "blocks": hidden},
            {"id": "neck", "blocks": hidden},
            {"id": "out", "blocks": [{"type": "linear", "out_features": 10}], "objective": {"head": "none"}},
        ],
    }


def test_a_pipeline_is_cut_into_contiguous_segments_of_nearly_equal_work() -> None:
    assert segments([75, 1060, 1060, 10], 2) == [0, 0, 1, 1]
    assert segments([75, 1060, 1060, 10], 3) == [0, 1, 2, 2]
    assert segments([5, 5, 5, 5], 1) == [0, 0, 0, 0]
    assert segments([1, 2], 5) == [0, 1]  # more nodes than VNodes: some stay idle
    assert segments([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert segments([], 3) == []


def test_a_whole_network_is_cut_over_trusted_nodes_and_single_vnodes_go_to_the_least_loaded() -> None:
    net = [Unhosted("n", v, c) for v, c in [("stem", 75), ("mid", 1060), ("neck", 1060), ("out", 10)]]
    hosts = [Host("a", True), Host("b", True), Host("u", False)]
    placed = dict((u.vnode_id, node) for u, node in place([net], [], hosts, {"a": 0, "b": 500, "u": 0}))
    # the untrusted node is left out while trusted ones can take it; the less loaded one gets the head
    assert placed == {"stem": "a", "mid": "a", "neck": "b", "out": "b"}
    # relocations: costliest first, each to the least loaded trusted node, then untrusted ones
    lost = [Unhosted("n", "thin", 10), Unhosted("n", "wide", 1000)]
    placed = dict((u.vnode_id, node) for u, node in place([], lost, hosts, {"a": 100, "b": 0, "u": 0}))
    assert placed == {"wide": "b", "thin": "a"}
    only_untrusted = place([], lost, [Host("u", False)], {"u": 0})
    assert [node for _, node in only_untrusted] == ["u", "u"]
    assert place([net], lost, [], {}) == []  # nothing is placed without hosts


def test_a_vnode_costs_its_blocks_multiply_adds_and_its_head() -> None:
    net = parse_spec(wide(1024))
    assert net.cost("mid") == 1024 * 1024 + 1024 + 1024 * 10  # linear, relu, linear head
    assert net.cost("out") == 1024 * 10  # no head: its output is the prediction
    assert net.cost("stem") < net.cost("mid") // 10


async def test_the_two_wide_vnodes_go_to_different_nodes(tmp_path: Path) -> None:
    import numpy as np

    from phage.training.data import dataset_bytes

    store = SqlStore(sqlite_url(tmp_path / "phage.db"))
    await store.open()
    try:
        svc = TrainingService(
            store=store,
            blobs=BlobStore(tmp_path / "blobs"),
            facts=lambda n: HostFacts(n, trusted=True, usable=True),
            quarantine=lambda n, why: asyncio.sleep(0),
            lost_after_s=30,
        )
        queues: dict[str, asyncio.Queue[Order]] = {"a": asyncio.Queue(), "b": asyncio.Queue()}
        svc.subscribers.update(queues)
        rng = np.random.default_rng(0)
        blob = dataset_bytes(rng.random((40, 64), dtype=np.float32), rng.integers(0, 10, 40))
        for _ in range(5):  # ties are broken at random: the balance must hold every time
            rec = await svc.submit(wide(1024), svc.blobs.put(blob), TrainingConfig(), "admin")
            await svc.reconcile()
            hosts = {v.vnode_id: v.node_id for v in svc.live[rec.id].states.values()}
            assert hosts["mid"] != hosts["neck"], hosts
            assert hosts["stem"] == hosts["mid"] and hosts["neck"] == hosts["out"], hosts  # contiguous
            await svc.cancel(rec.id)
    finally:
        await store.close()
