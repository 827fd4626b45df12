"""Simulated nodes reconnect after a coordinator restart: all of them, and not all at once.

``PHAGE_RECONNECT_NODES`` (default 150) nodes, each really enrolled with its own certificate, beat
over mutual TLS and hold a task long-poll, as idle nodes do (:mod:`phage.testing_swarm`). The
coordinator is stopped, which breaks every long-poll in the same instant, and started again. Every
node must be back online, heard from since the restart, and their retries must spread out: with the
nodes' jittered backoff no 100 ms window holds more than a fraction of the pool, where retries
without jitter would all land in the same window. ``bench/reconnect.py`` runs the same at 1,000.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from phage.node.endpoints import FETCH_BACKOFF_CAP_S
from phage.testing import CoordinatorProcess, wait_online
from phage.testing_swarm import ReconnectReport, Swarm, restart_and_reconnect

# reconnecting is gRPC and liveness, decided in memory; the store only keeps the nodes
pytestmark = [pytest.mark.backend_neutral, pytest.mark.timeout(240)]
NODES = int(os.environ.get("PHAGE_RECONNECT_NODES", "150"))
INTERVAL_S = 2.0


async def _scenario(coord: CoordinatorProcess) -> ReconnectReport:
    swarm = Swarm.joining(coord, interval_s=INTERVAL_S)
    try:
        await swarm.enroll(NODES)
        assert len(swarm.nodes) == NODES, swarm.enroll_failures
        swarm.start()
        await asyncio.to_thread(wait_online, coord, NODES, 60.0)
        # down for two retry ceilings at least, so that every node's retries while it is down can be seen
        return await restart_and_reconnect(
            coord, swarm, within_s=10 * INTERVAL_S, down_s=2 * FETCH_BACKOFF_CAP_S
        )
    finally:
        await swarm.close()


def test_simulated_nodes_all_reconnect_spread_out_after_a_restart(tmp_path: Path) -> None:
    lifted = {"PHAGE_REGISTER_BURST": "100000", "PHAGE_NEW_NODES_BURST": "100000"}  # one source address
    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=INTERVAL_S, env=lifted).start()
    try:
        report = asyncio.run(_scenario(coord))
    finally:
        coord.stop()
    print(report.as_dict())
    assert report.back == NODES and report.online_fresh == NODES, report
    assert report.back_max_s < 5 * INTERVAL_S, report
    # spread: lockstep retries would put every node (share 1.0) in one window, wave after wave
    # nodes keep trying while it is down (on a loaded machine a short outage may end before each has retried)
    assert report.outage_fetch_attempts >= NODES // 2, report
    assert report.outage_fetch_peak_share < 0.4, report
    assert report.back_peak_share < 0.4 and report.back_windows >= 5, report
