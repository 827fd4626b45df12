"""Where a hosted VNode's neighbours live, so its activation frames can go node to node.

A producer sends each frame straight to the node hosting the consumer, over that
node's data plane (mutual TLS), when the coordinator can say where it listens; the
consumer's node takes frames only from the node hosting the producer. The
coordinator's relay (:mod:`phage.coordinator.training_relay`) carries the rest.
"""

from __future__ import annotations

from collections.abc import Mapping

from phage.coordinator.training_types import Route
from phage.domain.networks import VNodeState
from phage.training.spec import INPUT, NetworkSpec


def routes(
    net: NetworkSpec, states: Mapping[str, VNodeState], vnode_id: str, addresses: Mapping[str, str]
) -> tuple[Route, ...]:
    """Where ``vnode_id``'s placed neighbours live: consumers to send to, producers to accept from."""
    out = []
    for c in net.consumers(vnode_id):
        s = states[c]
        if s.node_id and not s.done:
            out.append(Route(c, s.node_id, addresses.get(s.node_id, ""), s.generation, consumer=True))
    for p in net.vnode(vnode_id).inputs:
        if p != INPUT and states[p].node_id:
            out.append(Route(p, states[p].node_id, "", states[p].generation, consumer=False))
    return tuple(out)
