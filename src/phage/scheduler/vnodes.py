"""Where a training network's hostless VNodes go: a pure decision the training service then applies.

Nodes are balanced by the work their VNodes do (multiply-adds per row), not by count:
two wide VNodes sharing one node while another hosts two thin ones would make the
pipeline run at the pace of the crowded node. A network none of whose VNodes has a
host is placed whole, cut into contiguous segments of its pipeline (one per node, see
:func:`segments`), so neighbours share a node and their activations pass inside it;
trusted nodes are preferred when there are any. Single VNodes (relocations) go, the
costliest first, to the least loaded node, trusted first.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from phage.scheduler.segments import segments


@dataclass(frozen=True, slots=True)
class Unhosted:
    """A VNode that needs a host, and the work it does per row."""

    network_id: str
    vnode_id: str
    cost: int


@dataclass(frozen=True, slots=True)
class Host:
    """A node that may host VNodes."""

    node_id: str
    trusted: bool


def place(
    whole: Sequence[Sequence[Unhosted]],
    single: Sequence[Unhosted],
    hosts: Sequence[Host],
    load: Mapping[str, int],
    tiebreak: Callable[[], float] = random.random,
) -> list[tuple[Unhosted, str]]:
    """A node for each VNode: ``whole`` networks (each its VNodes in pipeline order), then ``single`` ones.

    ``load`` is the work each host already does; nothing is placed without hosts.
    """
    if not hosts:
        return []
    load = dict(load)
    placed: list[tuple[Unhosted, str]] = []
    for network in whole:
        pool = [h for h in hosts if h.trusted] or list(hosts)
        pool.sort(key=lambda h: (load[h.node_id], tiebreak()))
        for u, part in zip(network, segments([u.cost for u in network], len(pool)), strict=True):
            load[pool[part].node_id] += u.cost
            placed.append((u, pool[part].node_id))
    for u in sorted(single, key=lambda u: -u.cost):
        pick = min(hosts, key=lambda h: (not h.trusted, load[h.node_id] + u.cost, tiebreak()))
        load[pick.node_id] += u.cost
        placed.append((u, pick.node_id))
    return placed
