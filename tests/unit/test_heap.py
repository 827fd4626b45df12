"""The coordinator's heap keeper: long-lived objects leave the collector's way, cycles still die."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from phage.coordinator.heap import HeapKeeper


class _Node:
    """A cycle-forming object, as pool records with back references are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def keeper() -> Iterator[HeapKeeper]:
    yield HeapKeeper(freeze_period_s=60, deep_period_s=3600)
    HeapKeeper.release()


def test_freeze_moves_survivors_out_of_collections(keeper: HeapKeeper) -> None:
    kept = [_Node() for _ in range(1000)]
    keeper.freeze()
    assert gc.get_freeze_count() >= len(kept)
    HeapKeeper.release()
    assert gc.get_freeze_count() == 0


def test_garbage_made_after_a_freeze_is_collected_by_the_next_one(keeper: HeapKeeper) -> None:
    keeper.freeze()
    node = _Node()
    ref = weakref.ref(node)
    del node
    keeper.freeze()  # collects the unfrozen part first
    assert ref() is None


def test_a_cycle_among_frozen_objects_dies_in_the_deep_pass(keeper: HeapKeeper) -> None:
    node = _Node()
    ref = weakref.ref(node)
    keeper.freeze()  # the node is alive: frozen
    del node
    gc.collect()
    assert ref() is not None, "a frozen cycle is out of the ordinary collector's reach"
    pause = keeper.deep()
    assert ref() is None
    assert 0 <= pause <= keeper.longest_pause_s
