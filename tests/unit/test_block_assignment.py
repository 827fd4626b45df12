"""Block ranges: Petals' weakest-coverage rule, requested ranges, standbys, rebalancing, chains."""

from __future__ import annotations

import pytest

from phage.domain.blocks import BlockRange, Coverage, Server, ShardedModel
from phage.errors import InvalidInput
from phage.scheduler.blocks import Move, chain, place, rebalance, spans, weakest_window

MODEL = ShardedModel(name="m", checkpoint="/ckpt", num_blocks=8, bytes_per_block=100, redundancy=1)
HALF = 4 * 100  # memory for half the blocks


def test_ranges_parse_and_refuse_nonsense() -> None:
    assert BlockRange.parse("2:6") == BlockRange(2, 6)
    assert len(BlockRange(2, 6)) == 4 and 5 in BlockRange(2, 6) and 6 not in BlockRange(2, 6)
    for bad in ("6:2", "3", "a:b", "3:3", "-1:2"):
        with pytest.raises(InvalidInput, match="block range"):
            BlockRange.parse(bad)


def test_declaration_is_validated() -> None:
    with pytest.raises(InvalidInput) as e:
        ShardedModel(name="m", checkpoint="/c", num_blocks=0, bytes_per_block=1)
    assert e.value.field == "num_blocks"
    with pytest.raises(InvalidInput) as e:
        ShardedModel(name="bad name!", checkpoint="/c", num_blocks=2, bytes_per_block=1)
    assert e.value.field == "name"


def test_nodes_joining_take_the_weakest_range_until_covered() -> None:
    servers: list[Server] = []
    first = place(MODEL, servers, HALF)
    assert first.blocks == BlockRange(0, 4) and not first.standby
    servers.append(Server("a", first.blocks))
    second = place(MODEL, servers, HALF)
    assert second.blocks == BlockRange(4, 8) and not second.standby
    servers.append(Server("b", second.blocks))
    assert Coverage(MODEL, tuple(servers)).ready
    third = place(MODEL, servers, HALF)
    assert third.standby  # everything is served at redundancy 1: a spare


def test_weakest_window_prefers_the_least_served_run() -> None:
    assert weakest_window([2, 2, 1, 0, 0, 1, 2, 2], 3) == BlockRange(2, 5)
    assert weakest_window([1, 1, 1, 1], 9) == BlockRange(0, 4)


def test_requested_ranges_are_checked_against_model_and_memory() -> None:
    p = place(MODEL, [], HALF, BlockRange(2, 6))
    assert p.blocks == BlockRange(2, 6) and not p.standby
    with pytest.raises(InvalidInput, match="outside") as e:
        place(MODEL, [], 10_000, BlockRange(6, 12))
    assert e.value.field == "serve_blocks"
    with pytest.raises(InvalidInput, match="need 500 bytes"):
        place(MODEL, [], HALF, BlockRange(0, 5))
    with pytest.raises(InvalidInput, match="one block"):
        place(MODEL, [], 99)


def test_coverage_gaps_and_percent() -> None:
    cov = Coverage(MODEL, (Server("a", BlockRange(0, 2)), Server("b", BlockRange(5, 8))))
    assert cov.gaps() == [BlockRange(2, 5)]
    assert cov.coverage_percent == 62.5 and not cov.ready


def test_rebalance_moves_a_standby_into_a_gap_but_never_a_busy_node() -> None:
    servers = [Server("a", BlockRange(0, 4)), Server("c", BlockRange(0, 4), standby=True)]
    cap = {"a": 4, "c": 4}
    assert rebalance(MODEL, servers, cap) == Move("c", BlockRange(4, 8))
    assert rebalance(MODEL, servers, cap, busy={"c"}) == Move("a", BlockRange(4, 8))
    assert rebalance(MODEL, servers, cap, busy={"a", "c"}) is None
    # nobody moves when moving would open a new gap
    assert rebalance(MODEL, [Server("a", BlockRange(0, 4))], {"a": 4}) is None
    full = [Server("a", BlockRange(0, 4)), Server("b", BlockRange(4, 8))]
    assert rebalance(MODEL, full, {"a": 4, "b": 4}) is None


def test_chains_cover_every_block_in_order_avoiding_failed_nodes() -> None:
    servers = [
        Server("a", BlockRange(0, 3)),
        Server("b", BlockRange(3, 6)),
        Server("s", BlockRange(3, 6), standby=True),
        Server("c", BlockRange(2, 8)),
    ]
    assert [s.node_id for s in chain(MODEL, servers)] == ["a", "c"]
    route = chain(MODEL, servers, avoid={"c"})
    assert [s.node_id for s in route] == []  # without c nothing holds blocks 6:8
    servers.append(Server("d", BlockRange(6, 8)))
    route = chain(MODEL, servers, avoid={"c"})
    assert [s.node_id for s in route] == ["a", "b", "d"]
    assert [s.node_id for s in chain(MODEL, servers, avoid={"c", "b"})] == ["a", "s", "d"]
    assert spans(chain(MODEL, servers)) == [BlockRange(0, 3), BlockRange(3, 8)]
