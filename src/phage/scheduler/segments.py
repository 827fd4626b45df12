"""Cutting a pipeline into contiguous segments of nearly equal work, one per node.

A network's VNodes in topological order form a pipeline; hosting neighbours on the
same node lets their activations pass inside it instead of crossing the network,
and the pipeline runs at the pace of its busiest node. The cut that makes the
busiest segment as light as possible, among those that keep each segment
contiguous, is the classic linear partition: found exactly here by dynamic
programming (a few VNodes, a few nodes).
"""

from __future__ import annotations

from collections.abc import Sequence


def segments(costs: Sequence[int], parts: int) -> list[int]:
    """The segment (0 .. parts-1) of each item: contiguous, the heaviest segment as light as possible.

    Fewer items than parts leaves the last parts empty; ties go to the cut that
    puts more into earlier segments, so the result is deterministic.
    """
    n = len(costs)
    if n == 0:
        return []
    k = max(1, min(parts, n))
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[j][i]: the lightest possible heaviest segment when the first i items go into j segments
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for m in range(i - 1, j - 2, -1):  # the last segment is items m .. i-1
                worst = max(best[j - 1][m], prefix[i] - prefix[m])
                if worst < best[j][i]:
                    best[j][i], cut[j][i] = worst, m
    out = [0] * n
    i = n
    for j in range(k, 0, -1):
        m = cut[j][i]
        for x in range(m, i):
            out[x] = j - 1
        i = m
    return out
