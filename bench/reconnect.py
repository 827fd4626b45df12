"""Nodes reconnecting after a coordinator restart: do all come back, and how spread are their tries?

A real ``phage coordinator`` subprocess and N simulated nodes (default 1,000) in this process
(:mod:`phage.testing_swarm`): each really enrolled with its own identity and certificate, beating
over mutual TLS at the pool's interval and holding a ``FetchTask`` long-poll, as an idle node does,
with the node's own jittered backoff on every retry. Once all are online the coordinator is
stopped (every long-poll breaks in the same instant) and started again on the same data. Reported:
how long it was down, the long-poll retries sent meanwhile and the largest share of nodes in one
100 ms window, then when each node's first heartbeat back was sent (p50 / p90 / max after
``/healthz`` answered), the largest share in one 100 ms window, and how many the coordinator counts
online and heard from since the restart.

``--lockstep`` runs the same with the jitter taken out (every retry waits its full ceiling, as
nodes did before), for comparison.

    .venv/bin/python bench/reconnect.py                       # 1,000 nodes, 10 s heartbeats
    .venv/bin/python bench/reconnect.py --lockstep            # the same without jitter
    .venv/bin/python bench/reconnect.py --nodes 200 --interval 2
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import clean_nan, machine_info, write_results


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start the pool, enroll, restart the coordinator, measure."""
    from phage.testing import CoordinatorProcess, wait_online
    from phage.testing_swarm import Swarm, restart_and_reconnect

    lifted = {"PHAGE_REGISTER_BURST": "1000000", "PHAGE_NEW_NODES_BURST": "1000000"}  # one source address
    coord = CoordinatorProcess(tmp / "coordinator", heartbeat_s=args.interval, env=lifted)
    await asyncio.to_thread(coord.start, 60.0)
    swarm = Swarm.joining(
        coord,
        interval_s=args.interval,
        enroll_concurrency=args.enroll_concurrency,
        seed=args.seed,
        jitter=not args.lockstep,
    )
    try:
        t0 = time.monotonic()
        await swarm.enroll(args.nodes)
        enroll_s = time.monotonic() - t0
        print(f"enrolled {len(swarm.nodes)} nodes in {enroll_s:.1f} s", flush=True)
        swarm.start()
        await asyncio.to_thread(wait_online, coord, len(swarm.nodes), 120.0)
        await asyncio.sleep(args.interval)  # every node's phase comes round once
        report = await restart_and_reconnect(coord, swarm, within_s=args.within)
    finally:
        await swarm.close()
        await asyncio.to_thread(coord.stop)
    return {
        "enroll_s": round(enroll_s, 1),
        "enroll_failures": dict(swarm.enroll_failures),
        **report.as_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run once, print the figures, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10.0, help="heartbeat interval (s), the pool's default")
    p.add_argument("--within", type=float, default=120.0, help="longest wait for every node to be back (s)")
    p.add_argument("--enroll-concurrency", type=int, default=16)
    p.add_argument("--lockstep", action="store_true", help="retries without jitter, for comparison")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="phage-reconnect-"))
    try:
        result = asyncio.run(run(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for key, value in result.items():
        print(f"  {key:24} {value}")
    path = write_results(
        "reconnect",
        clean_nan(
            {
                "bench": "reconnect",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": vars(args),
                "machine": machine_info(),
                "result": result,
            }
        ),
    )
    print(f"wrote {path}")
    ok = result["back"] == result["nodes"] == result["online_fresh"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
