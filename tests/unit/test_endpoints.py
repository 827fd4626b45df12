"""Coordinator replicas a node may dial, and the jittered backoff that spreads reconnecting nodes."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from phage.errors import InvalidInput
from phage.node.endpoints import Backoff, Endpoints, parse_addresses


def test_addresses_parse_and_refuse_by_name() -> None:
    assert parse_addresses("a:9090, b:9191,[::1]:7000") == [("a", 9090), ("b", 9191), ("::1", 7000)]
    for bad in ("", "a", "a:", ":9090", "a:99999", "a:90x"):
        with pytest.raises(InvalidInput) as exc:
            parse_addresses(bad)
        assert exc.value.field == "coordinator"


def test_each_replica_enrolls_on_its_own_port_plus_one_unless_told() -> None:
    eps = Endpoints("10.0.0.1:9090,10.0.0.2:9190")
    assert [(e.target, e.enroll, e.tls_name) for e in eps.all] == [
        ("10.0.0.1:9090", "10.0.0.1:9091", None),
        ("10.0.0.2:9190", "10.0.0.2:9191", None),
    ]
    one = Endpoints("10.0.0.1:9090,10.0.0.2:9090", "10.0.0.9:7000")
    assert {e.enroll for e in one.all} == {"10.0.0.9:7000"}
    with pytest.raises(InvalidInput) as exc:
        Endpoints("10.0.0.1:9090,10.0.0.2:9090,10.0.0.3:9090", "a:1,b:2")
    assert exc.value.field == "enroll"


def test_a_name_for_several_replicas_dials_each_address_but_checks_the_name() -> None:
    answers = {"pool.example": ["192.0.2.1", "192.0.2.2"], "solo.example": ["192.0.2.9"]}
    eps = Endpoints("pool.example:9090,solo.example:9090", resolve=lambda host, _port: answers[host])
    assert [(e.target, e.tls_name) for e in eps.all] == [
        ("192.0.2.1:9090", "pool.example"),
        ("192.0.2.2:9090", "pool.example"),
        ("solo.example:9090", None),
    ]


def test_advance_walks_round_and_resolves_again() -> None:
    answers = {"pool.example": ["192.0.2.1", "192.0.2.2"]}
    eps = Endpoints("pool.example:9090", resolve=lambda host, _port: answers[host])
    assert eps.current.target == "192.0.2.1:9090"
    assert eps.advance().target == "192.0.2.2:9090"
    answers["pool.example"] = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]  # a replica was added
    assert eps.advance().target == "192.0.2.1:9090"
    assert [e.target for e in eps.all][-1] == "192.0.2.3:9090"


def test_backoff_grows_within_its_cap() -> None:
    b = Backoff(base_s=0.2, cap_s=5.0, rng=random.Random(1))
    ceilings = [min(5.0, 0.2 * 2**n) for n in range(10)]
    delays = [b.next_delay() for _ in ceilings]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    b.reset()
    assert b.next_delay() <= 0.2


def _attempt_times(nodes: int, tries: int, jitter: bool) -> list[list[float]]:
    """When each of ``nodes`` nodes, all cut off at t=0, knocks again; one list per try."""
    per_try: list[list[float]] = [[] for _ in range(tries)]
    for i in range(nodes):
        b = Backoff(base_s=0.2, cap_s=5.0, rng=random.Random(i))
        t = 0.0
        for n in range(tries):
            t += b.next_delay() if jitter else min(5.0, 0.2 * 2**n)
            per_try[n].append(t)
    return per_try


def _windows(times: list[float]) -> Counter[int]:
    """Attempts per 100 ms window."""
    return Counter(int(t / 0.1) for t in times)


def test_many_reconnecting_nodes_spread_their_attempts() -> None:
    nodes, tries = 1000, 6
    lockstep = _attempt_times(nodes, tries, jitter=False)
    jittered = _attempt_times(nodes, tries, jitter=True)
    # without jitter the whole pool knocks in the same 100 ms, try after try
    assert all(max(_windows(t).values()) == nodes for t in lockstep)
    assert len(_windows([t for ts in lockstep for t in ts])) == tries
    # with full jitter each try spreads over its whole window, which doubles: the peak halves per try
    peaks = [max(_windows(t).values()) for t in jittered]
    assert all(later < earlier for earlier, later in itertools.pairwise(peaks)), peaks
    assert max(peaks[3:]) < nodes * 0.1, peaks
    assert len(_windows([t for ts in jittered for t in ts])) > 15 * tries
