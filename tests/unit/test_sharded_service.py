"""The coordinator's sharded-model service over a fake clock: assignment, held vs assigned, expiry, moves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from phage.coordinator.sharded import ShardedModels
from phage.domain.blocks import BlockOffer, BlockRange, ShardedModel
from phage.errors import Conflict, InvalidInput, NotFound, Unavailable

MODEL = ShardedModel(name="m", checkpoint="/nowhere", num_blocks=8, bytes_per_block=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def svc(tmp_path: Path) -> tuple[ShardedModels, Clock]:
    clock = Clock()
    s = ShardedModels(tmp_path / "sharded.json", lease_s=1.5, clock=clock)
    s.declare(MODEL)
    return s, clock


def offer(memory: int = 400, serve: str = "auto", held: BlockRange | None = None, **kw: object) -> BlockOffer:
    return BlockOffer(
        serve_blocks=serve,
        dataplane_address="127.0.0.1:1",
        memory_bytes=memory,
        model="m" if held else "",
        start=held.start if held else 0,
        end=held.end if held else 0,
        **kw,  # type: ignore[arg-type]
    )


def test_declarations_persist_and_conflict(svc: tuple[ShardedModels, Clock], tmp_path: Path) -> None:
    s, _ = svc
    with pytest.raises(Conflict):
        s.declare(MODEL)
    again = ShardedModels(tmp_path / "sharded.json", lease_s=1.5)
    again.load()
    assert again.get("m") == MODEL
    s.remove("m")
    with pytest.raises(NotFound):
        s.get("m")


def test_declared_blocks_must_match_a_readable_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"num_hidden_layers": 8}')
    s = ShardedModels(tmp_path / "s.json", lease_s=1)
    with pytest.raises(InvalidInput, match="cover the checkpoint") as e:
        s.declare(ShardedModel(name="x", checkpoint=str(ckpt), num_blocks=6, bytes_per_block=1))
    assert e.value.field == "num_blocks"
    s.declare(ShardedModel(name="x", checkpoint=str(ckpt), num_blocks=8, bytes_per_block=1))


def test_assigned_ranges_spread_joiners_and_only_held_ranges_count(svc: tuple[ShardedModels, Clock]) -> None:
    s, _ = svc
    a = s.heartbeat("a", offer())
    b = s.heartbeat("b", offer())  # joins before a has loaded: still goes to the other half
    assert (a.blocks, b.blocks) == (BlockRange(0, 4), BlockRange(4, 8))
    assert s.coverage("m").coverage_percent == 0.0
    with pytest.raises(Unavailable, match="0:8"):
        s.require_ready("m")
    s.heartbeat("a", offer(held=BlockRange(0, 4)))
    s.heartbeat("b", offer(held=BlockRange(4, 8)))
    assert s.coverage("m").ready
    hops = asyncio.run(s.route("m", 0, ()))
    assert [(h.node_id, h.start) for h in hops] == [("a", 0), ("b", 4)]


def test_a_silent_server_expires_and_a_standby_moves_into_the_gap(svc: tuple[ShardedModels, Clock]) -> None:
    s, clock = svc
    s.heartbeat("a", offer(held=None))
    s.heartbeat("a", offer(held=BlockRange(0, 4)))
    s.heartbeat("b", offer())
    s.heartbeat("b", offer(held=BlockRange(4, 8)))
    c = s.heartbeat("c", offer())
    assert c.standby and c.blocks == BlockRange(0, 4)
    s.heartbeat("c", offer(held=BlockRange(0, 4)))
    clock.now += 1.0
    s.heartbeat("a", offer(held=BlockRange(0, 4)))
    s.heartbeat("c", offer(held=BlockRange(0, 4)))
    clock.now += 1.0  # b silent for 2 s > the 1.5 s lease
    moved = s.heartbeat("c", offer(held=BlockRange(0, 4)))
    assert moved.blocks == BlockRange(4, 8) and not moved.standby
    assert s.coverage("m").gaps() == [BlockRange(4, 8)]  # until c reports it holds them


def test_a_node_with_live_sessions_is_not_moved(svc: tuple[ShardedModels, Clock]) -> None:
    s, _ = svc
    s.heartbeat("a", offer())
    s.heartbeat("a", offer(held=BlockRange(0, 4)))
    s.heartbeat("b", offer())
    assert s.heartbeat("c", offer()).standby
    s.leave("b")
    # c serves sessions: it keeps its blocks; a (idle, its blocks still served by c) goes to the gap.
    assert s.heartbeat("c", offer(held=BlockRange(0, 4), active_sessions=2)).blocks == BlockRange(0, 4)
    assert s.heartbeat("a", offer(held=BlockRange(0, 4))).blocks == BlockRange(4, 8)


def test_nobody_moves_while_every_candidate_serves_sessions(svc: tuple[ShardedModels, Clock]) -> None:
    s, _ = svc
    s.heartbeat("a", offer())
    s.heartbeat("b", offer())
    assert s.heartbeat("c", offer()).standby
    s.leave("b")
    for _ in range(3):
        assert s.heartbeat("a", offer(held=BlockRange(0, 4), active_sessions=1)).blocks == BlockRange(0, 4)
        assert s.heartbeat("c", offer(held=BlockRange(0, 4), active_sessions=2)).blocks == BlockRange(0, 4)
    assert s.coverage("m").gaps() == [BlockRange(4, 8)]
    # the sessions end: the next heartbeat moves one of them to the gap
    moved = [s.heartbeat(n, offer(held=BlockRange(0, 4))).blocks for n in ("a", "c")]
    assert BlockRange(4, 8) in moved and BlockRange(0, 4) in moved


def test_bad_offers_get_the_reason_back(svc: tuple[ShardedModels, Clock]) -> None:
    s, _ = svc
    assert "outside" in s.heartbeat("x", offer(serve="6:12", memory=10_000)).error
    assert "need 800 bytes" in s.heartbeat("y", offer(serve="0:8", memory=300)).error
    assert "START:END" in s.heartbeat("z", offer(serve="nonsense")).error
    assert "no sharded model" in s.heartbeat("w", offer(requested_model="other")).error
    assert s.heartbeat("v", offer(memory=50)).error  # not even one block fits
