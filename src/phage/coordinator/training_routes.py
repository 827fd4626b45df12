"""Where a hosted VNode's frames go, and from which batch a restarted VNode passes them on again.

A producer sends each frame straight to the node hosting the consumer, over that
node's data plane (mutual TLS), when the coordinator can say where it listens; the
consumer's node takes frames only from the node hosting the producer. The
coordinator's relay (:mod:`phage.coordinator.training_relay`) carries the rest.
"""

from __future__ import annotations

from collections.abc import Mapping

from phage.coordinator.training_types import Route
from phage.domain.networks import VNodeState
from phage.store.blobs import BlobStore
from phage.training.checkpoint import checkpoint_last_batch
from phage.training.spec import NetworkSpec


def routes(
    net: NetworkSpec, states: Mapping[str, VNodeState], vnode_id: str, addresses: Mapping[str, str]
) -> tuple[Route, ...]:
    """Where ``vnode_id``'s placed neighbours live: consumers to send to, producers to accept from."""
    out = []
    for c in net.consumers(vnode_id):
        s = states[c]
        if s.node_id and not s.done:
            out.append(Route(c, s.node_id, addresses.get(s.node_id, ""), s.generation, consumer=True))
    for p in net.producers(vnode_id):
        if states[p].node_id:
            out.append(Route(p, states[p].node_id, "", states[p].generation, consumer=False))
    return tuple(out)


class CheckpointBatches:
    """The last batch each checkpoint applied (-1 for fresh weights), read once per checkpoint."""

    def __init__(self, blobs: BlobStore, keep: int = 4096) -> None:
        self.blobs = blobs
        self.keep = keep
        self._known: dict[str, int] = {}

    def last_batch(self, digest: str) -> int:
        """The last batch the checkpoint ``digest`` applied ("" or a missing blob: -1)."""
        if not digest:
            return -1
        known = self._known.get(digest)
        if known is None:
            known = checkpoint_last_batch(self.blobs.read(digest)) if self.blobs.exists(digest) else -1
            if len(self._known) >= self.keep:
                self._known.clear()
            self._known[digest] = known
        return known


def replay_from(
    net: NetworkSpec, states: Mapping[str, VNodeState], vnode_id: str, batches: CheckpointBatches
) -> int:
    """The first batch a (re)started VNode must pass on: the oldest any VNode downstream lacks.

    A consumer resumes from its own checkpoint, which may be far behind what its
    producer's checkpoint already applied (frames in flight, buffered in the relay and
    the streams); replaying from the oldest checkpoint downstream loses none of those
    batches. Replaying more than needed costs only forward passes: a consumer drops a
    batch it already applied.
    """
    downstream = [d.id for d in net.vnodes if vnode_id in net.ancestors(d.id)]
    return min((batches.last_batch(states[d].checkpoint) + 1 for d in downstream), default=0)
