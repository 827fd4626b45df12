"""What the training service and its nodes say to each other, and what placement knows of a node.

Plain values, so that the gRPC edge (:mod:`phage.coordinator.training_grpc`)
converts them without reaching into the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phage.domain.networks import TrainingConfig


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What placement needs to know of a node."""

    node_id: str
    trusted: bool
    usable: bool
    """Online, admitted, not quarantined, not draining."""
    online: bool = True
    """Counted alive by heartbeats (a node that misses a few gets a grace period, not a move)."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a neighbour of a hosted VNode lives now (``address`` "": only through the relay)."""

    vnode_id: str
    node_id: str
    address: str
    generation: int
    consumer: bool
    """True: it takes the hosted VNode's output; False: it feeds the hosted VNode."""


@dataclass(frozen=True, slots=True)
class HostOrder:
    """Host (or resume) one VNode."""

    network_id: str
    vnode_id: str
    spec: Mapping[str, Any]
    dataset: str
    checkpoint: str
    config: TrainingConfig
    check_rate: float
    generation: int
    replay_from: int = 0
    """The first batch to pass on again: those its checkpoint already applied are forwarded only,
    so consumers resuming from older checkpoints of their own lose no batch."""
    routes: tuple[Route, ...] = ()
    routes_only: bool = False
    """Only the neighbours moved: a node hosting this generation updates its routes, others ignore it."""


@dataclass(frozen=True, slots=True)
class DropOrder:
    """Stop hosting a VNode."""

    network_id: str
    vnode_id: str


@dataclass(frozen=True, slots=True)
class CheckOrder:
    """Recompute one step another node made."""

    check_id: str
    network_id: str
    vnode_id: str
    spec: Mapping[str, Any]
    before: str
    inputs: str
    seq: int


Order = HostOrder | DropOrder | CheckOrder


@dataclass(frozen=True, slots=True)
class Report:
    """What a host says of its VNode."""

    network_id: str
    vnode_id: str
    generation: int
    step: int
    last_batch: int
    loss: float
    samples_per_s: float
    samples: int
    checkpoint: str = ""
    done: bool = False
    error: str = ""
    check_seq: int = -1
    check_before: str = ""
    check_inputs: str = ""
    check_after: str = ""
    frames: tuple[int, int, int] = (0, 0, 0)
    """Frames passed on since the hosting started: node to node, through the relay, in memory."""
