"""Where a node dials: several coordinator replicas, one at a time, and how long it waits between tries.

A node is given ``--coordinator a:9090,b:9090`` (any number of replicas), or a name that
resolves to several addresses, or both. It stays with one replica while that one answers
— its long-polls, streams and cached leases live there — and moves to the next when it
stops answering. Names are resolved again each time the list is walked round, so a
replica added to DNS is found without a restart. When a name stands for several
addresses the node dials each address but checks the coordinator's certificate against
the name (TLS target name override), as it would have dialled the name itself.

Retries wait with *full jitter* exponential backoff: a uniformly random delay in
``[0, min(cap, base × 2ⁿ)]``. When a replica dies, every node attached to it notices
within the same instant; without jitter they would all knock on the next replica in
lockstep waves, each wave a thundering herd. With it their attempts spread evenly
over the window, while the expected delay still doubles on every failure.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from phage.errors import InvalidInput, Unavailable
from phage.protocol.channels import channel_closed_under

Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One dialable replica."""

    target: str
    """``host:port`` handed to gRPC (an IP literal when it came from a name that resolves to several)."""
    enroll: str
    """``host:port`` of its enrollment listener."""
    tls_name: str | None = None
    """The name its certificate is checked against, when ``target`` is an address behind a name."""


def parse_addresses(text: str, field_name: str = "coordinator") -> list[tuple[str, int]]:
    """``a:9090,b:9090,[::1]:9090`` → [(host, port), …]; refuses a malformed entry by name."""
    out: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"{field_name} address {item!r} must be host:port", field=field_name)
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise InvalidInput(f"give at least one {field_name} address host:port", field=field_name)
    return out


def _is_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_resolver(host: str, port: int) -> list[str]:
    """Every distinct address ``host`` resolves to, in the resolver's order."""
    seen: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = str(sockaddr[0])
        if ip not in seen:
            seen.append(ip)
    return seen


class Endpoints:
    """The replicas a node may use, with the one in use now; ``advance()`` moves to the next."""

    def __init__(self, coordinators: str, enroll: str | None = None, *, resolve: Resolver = system_resolver):
        self._given = parse_addresses(coordinators)
        self._enroll = parse_addresses(enroll, "enroll") if enroll else None
        if self._enroll is not None and len(self._enroll) not in (1, len(self._given)):
            raise InvalidInput("give one enroll address, or one per coordinator address", field="enroll")
        self._resolve = resolve
        self._list: list[Endpoint] = []
        self._index = 0
        self._refresh()

    def _enroll_for(self, i: int, port: int) -> tuple[str | None, int]:
        if self._enroll is None:
            return None, port + 1
        host, eport = self._enroll[i if len(self._enroll) > 1 else 0]
        return host, eport

    def _refresh(self) -> None:
        """Resolve the names again (one that fails to resolve is left out this round)."""
        found: list[Endpoint] = []
        for i, (host, port) in enumerate(self._given):
            enroll_host, enroll_port = self._enroll_for(i, port)
            if _is_literal(host):
                found.append(Endpoint(_join(host, port), _join(enroll_host or host, enroll_port)))
                continue
            try:
                addresses = self._resolve(host, port)
            except OSError:
                addresses = []
            if len(addresses) <= 1:  # one address (or none now): dial the name as given
                found.append(Endpoint(_join(host, port), _join(enroll_host or host, enroll_port)))
                continue
            for ip in addresses:
                found.append(Endpoint(_join(ip, port), _join(enroll_host or ip, enroll_port), tls_name=host))
        self._list = found

    @property
    def all(self) -> Sequence[Endpoint]:
        """Every replica known now, in dialling order."""
        return tuple(self._list)

    @property
    def current(self) -> Endpoint:
        """The replica in use."""
        return self._list[self._index]

    def advance(self) -> Endpoint:
        """Move to the next replica (resolving names again after a full round)."""
        self._index += 1
        if self._index >= len(self._list):
            self._refresh()
            self._index = 0
        return self.current


@dataclass
class Backoff:
    """Full-jitter exponential backoff: wait ``uniform(0, min(cap, base × 2ⁿ))`` after the n-th failure."""

    base_s: float = 0.2
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """The wait before the next try; counts one more failure."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.failures, 32)))
        self.failures += 1
        return self.rng.uniform(0.0, ceiling)

    async def wait(self) -> None:
        """Sleep the next delay."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """A try succeeded: start small again."""
        self.failures = 0


FETCH_BACKOFF_CAP_S = 2.0
"""Longest wait between a node's tries to reopen its task long-poll."""


def heartbeat_backoff(interval_s: float, rng: random.Random | None = None) -> Backoff:
    """The heartbeat loop's retries: never more than one interval apart (three missed and a node is dead)."""
    return Backoff(base_s=min(0.2, interval_s / 4), cap_s=interval_s, rng=rng or random.Random())


def fetch_backoff(rng: random.Random | None = None) -> Backoff:
    """The task long-poll's retries (it breaks on every node at once when the coordinator goes)."""
    return Backoff(cap_s=FETCH_BACKOFF_CAP_S, rng=rng or random.Random())


RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Codes after which a node tries a call to the coordinator again (anything else is a definite refusal)."""


async def retry_rpc(call: Callable[[], Awaitable[Any]], attempts: int = 1_000_000) -> Any:
    """Retry an RPC while the coordinator is unreachable; give up on a definite refusal.

    ``call`` builds the call each time, so a retry goes through whichever channel is current
    (a closed one — the node just moved to another replica — is tried again on the new one).
    """
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    for attempt in range(attempts):
        try:
            return await call()
        except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
            if not channel_closed_under(exc):
                raise
            await backoff.wait()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            await backoff.wait()
    raise Unavailable(f"the coordinator did not answer in {attempts} tries")
