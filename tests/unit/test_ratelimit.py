"""Per-source token buckets and the task-list cursor: pure logic with a fake clock."""

from __future__ import annotations

import pytest

from phage.coordinator.ratelimit import Rate, RateLimiter, grpc_peer_host
from phage.errors import InvalidInput, RateLimited
from phage.store import PageCursor


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(Rate(3, 0.5), "tries", clock=lambda: now[0])
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimited, match="too many tries from a") as refused:
        limiter.take("a")
    assert refused.value.retry_after_s == pytest.approx(2.0)
    limiter.take("b")  # another source has its own bucket
    now[0] += 2.0
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_charge_spends_only_what_failed_and_cost_can_be_bytes() -> None:
    now = [0.0]
    failures = RateLimiter(Rate(2, 1.0), "failures", clock=lambda: now[0])
    failures.check("a")  # checking is free
    failures.check("a")
    failures.charge("a")
    failures.charge("a")
    with pytest.raises(RateLimited):
        failures.check("a")
    upload = RateLimiter(Rate(1000, 10.0), "bytes", clock=lambda: now[0])
    upload.take("n", 900)
    with pytest.raises(RateLimited):
        upload.take("n", 200)
    now[0] += 10
    upload.take("n", 200)


def test_table_of_sources_is_bounded() -> None:
    limiter = RateLimiter(Rate(1, 0.001), "x", max_sources=100)
    for i in range(10_000):
        limiter.charge(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def test_grpc_peer_host() -> None:
    assert grpc_peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert grpc_peer_host("ipv6:[::1]:5555") == "::1"
    assert grpc_peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_page_cursor_round_trips_exactly() -> None:
    cursor = PageCursor(1764451200.123456789, "t_abc")
    assert PageCursor.decode(cursor.encode()) == cursor
    for bad in ("", "1.5", "~t_x", "nan~t_x", "x~t_x", "1.0~" + "a" * 65):
        with pytest.raises(InvalidInput, match="cursor"):
            PageCursor.decode(bad)
