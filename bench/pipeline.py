"""One model through a chain of nodes: what the data plane costs beside running the model whole.

A Llama-architecture model is made locally (random weights; 12 blocks of width 1024, so a
whole-model decode step takes well over 20 ms on this machine's CPU) and split into stages,
each behind its own data-plane server (gRPC + mutual TLS on loopback, certificates from a
throwaway CA), exactly as nodes serve them. torch runs one thread per process, so the
numbers are the pipeline's and not the thread pool's. It measures, for greedy decoding:

* **tokens/s, one session**: the whole model in process with no network (the baseline), then
  the same model through a chain of 1, 2 and 3 stage servers, three ways: decoding on its own
  (each hop hands its output to the next and the last hop picks the token and hands it to the
  first; the caller only reads along — how phage generates by default), the caller driving
  each step with each hop handing its output to the next, and the caller relaying every
  hop's output;
* **added per hop**: per decode step, (chain step time − the hops' own compute) / hops, p50
  and p99 — serialisation, TLS, gRPC and the event loop, the price of splitting;
* **8 sessions**: tokens/s summed over 8 concurrent sessions through 2 stages;
* **a distant caller**: the caller 5 ms (each way) from its two nodes, which reach each other
  directly — what the driver's distance costs a chain it drives and one that decodes on its own;
* **checked activations**: tokens/s through 2 stages, every node untrusted and a second node
  holding each range, with 5 % and with 100 % of steps recomputed (``dataplane/checks.py``).

A chain that decodes on its own cannot be stepped in lockstep with the whole model, so its
ratio compares median step times over blocks alternating with the whole model's.

    .venv/bin/python bench/pipeline.py              # 48 tokens per run, stage servers in this process
    .venv/bin/python bench/pipeline.py --processes  # each stage server in a process of its own
    .venv/bin/python bench/pipeline.py --quick      # 16 tokens per run, smaller model
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _delay_proxy import DelayProxy
from _util import fmt_ms, percentile

PROMPT = list(range(5, 21))
DISTANT_S = 0.005
"""How far (each way) the distant-caller rows put the chain's driver from its nodes."""


class Process:
    """A stage server in a process of its own (``_stage_server.py``), as a node runs it."""

    def __init__(self, proc: asyncio.subprocess.Process, node_id: str, address: str) -> None:
        self.proc = proc
        self.node_id = node_id
        self.address = address

    @classmethod
    async def start(cls, model: Path, pki: Path, a: int, b: int) -> Process:
        script = Path(__file__).resolve().parent / "_stage_server.py"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(model),
            str(pki),
            str(a),
            str(b),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        node_id, address = (await proc.stdout.readline()).decode().split()
        return cls(proc, node_id, address)

    async def stop(self, _grace: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def main(quick: bool, processes: bool) -> None:
    import torch

    from phage.dataplane import DataPlaneServer
    from phage.dataplane.chain import ChainSession, Hop, generate_tokens
    from phage.dataplane.checks import CheckPolicy, Evidence, Verifier
    from phage.dataplane.sampling import Sampling
    from phage.dataplane.transport import Peer, direct, issue_identity
    from phage.domain.blocks import BlockRange, Server, ShardedModel
    from phage.node.engines.tinymodel import make_tiny_model
    from phage.node.stage import StageModel
    from phage.node.stage_service import StageHandler
    from phage.pki.ca import CertificateAuthority
    from phage.pki.identity import NodeIdentity
    from phage.scheduler.blocks import chain

    torch.set_num_threads(1)
    tokens = 16 if quick else 48
    blocks = 12
    width = 512 if quick else 1024
    tmp = Path(tempfile.mkdtemp(prefix="phage-bench-pipeline-"))
    path = make_tiny_model(
        tmp / "model", layers=blocks, hidden_size=width, intermediate_size=width * 11 // 4, name="bench"
    )
    ca = CertificateAuthority.load_or_create(tmp / "pki")
    client = issue_identity(ca, NodeIdentity.generate())
    model = ShardedModel(name="bench", checkpoint=str(path), num_blocks=blocks, bytes_per_block=1)

    servers: list[tuple[DataPlaneServer | Process, Server]] = []

    async def serve(ranges: list[tuple[int, int]], standby: bool = False) -> None:
        for a, b in ranges:
            if processes:
                child = await Process.start(path, tmp / "pki", a, b)
                servers.append((child, Server(child.node_id, BlockRange(a, b), standby=standby)))
                continue
            ident = issue_identity(ca, NodeIdentity.generate())
            stage = StageModel(path, BlockRange(a, b))
            handler = StageHandler({"bench": stage}, dial=direct(ident), node_id=ident.node_id)
            server = DataPlaneServer(ident, {"stage": handler})
            await server.start()
            servers.append((server, Server(ident.node_id, BlockRange(a, b), standby=standby)))

    async def route(start: int, avoid: Collection[str]) -> list[Hop]:
        address = {s.node_id: srv.address for srv, s in servers}
        hops, pos = [], start
        for s in chain(model, [s for _, s in servers], avoid=avoid, start=start):
            hops.append(Hop(s.node_id, address[s.node_id], s.blocks, pos))
            pos = s.blocks.end
        return hops

    async def find(b: BlockRange, start: int, avoid: Collection[str]) -> Verifier | None:
        for srv, s in servers:
            if s.node_id not in avoid and s.blocks.start <= start and s.blocks.end == b.end:
                return Verifier(s.node_id, srv.address, s.blocks)
        return None

    async def report(e: Evidence) -> None:
        raise AssertionError(f"an honest node was flagged: {e.describe()}")

    def checked(rate: float) -> CheckPolicy:
        return CheckPolicy(rate=rate, untrusted=lambda _n: True, find_verifier=find, report=report)

    # The machine is shared, so its speed drifts: every configuration is timed step by step,
    # interleaved with the same step of the whole model in process, and reported as a ratio.
    whole = StageModel(path, BlockRange(0, blocks))

    async def alone(
        name: str, mode: str = "push", dial: Any = None
    ) -> tuple[list[float], list[float], list[float]]:
        """Decode ``tokens`` steps through the chain only: each hop's added time as the caller sees it,
        each step's time, and (a ring) each hop's added time token to token on the first node.

        ``mode``: ``ring`` (the chain decodes on its own, as phage generates by default), ``push``
        (the caller drives each step, each hop handing its output to the next) or ``relay`` (the
        caller drives each step and relays every hop's output). Nothing else runs between steps
        (the lockstep race streams the whole model's weights through the CPU caches between two
        chain steps, which a client elsewhere would not)."""
        session = ChainSession("bench", client, route, push=mode != "relay", dial=dial)
        marks = []
        if mode == "ring":
            async for _ in generate_tokens(session, PROMPT, Sampling(max_tokens=tokens + 1)):
                marks.append(time.perf_counter())
            assert session.pushed_steps == tokens, "the chain did not decode on its own"
        else:
            ids = PROMPT
            for _ in range(tokens + 1):
                ids = [int((await session.forward(ids)).argmax())]
                marks.append(time.perf_counter())
        await session.close()
        steps = [b - a for a, b in itertools.pairwise(marks)]
        # the prompt's prefill is not a decode step
        return session.hop_overheads[len(session.hops) :], steps, session.ring_overheads

    def whole_steps(name: str) -> list[float]:
        """``tokens`` greedy decode steps of the whole model in process, each timed."""
        times = []
        x: Any = torch.tensor(PROMPT)
        whole.forward(name, x)
        for _ in range(tokens):
            t0 = time.perf_counter()
            logits = whole.forward(name, x)
            times.append(time.perf_counter() - t0)
            x = torch.tensor([int(logits.argmax())])
        whole.end_session(name)
        return times

    async def in_blocks(
        name: str, mode: str, dial: Any = None
    ) -> tuple[float, list[float], list[float], list[float]]:
        """The chain alone in ``mode``, in blocks alternating with the whole model (twice each): the
        ratio of median step times, the chain's steps, its per-hop overheads as the caller sees them
        and as its first node does. A chain that decodes on its own cannot be stepped in lockstep."""
        base, steps, seen, ring = [], [], [], []
        for k in range(2):
            base += whole_steps(f"{name}w{k}")
            own, st, cycle = await alone(f"{name}{k}", mode, dial)
            seen += own
            steps += st
            ring += cycle
        return statistics.median(base) / statistics.median(steps), steps, seen, ring

    async def race(
        name: str, policies: list[CheckPolicy | None], push: bool = True
    ) -> tuple[float, list[float], list[float]]:
        """Decode ``tokens`` steps in lockstep: the whole model, then one session per policy."""
        sessions = [ChainSession("bench", client, route, checks=p, push=push) for p in policies]
        base_t: list[float] = []
        chain_t: list[float] = []
        x: Any = torch.tensor(PROMPT)
        ids = [PROMPT] * len(sessions)
        for step in range(tokens + 1):
            t0 = time.perf_counter()
            logits = whole.forward(name, x)
            t1 = time.perf_counter()
            outs = await asyncio.gather(*(s.forward(i) for s, i in zip(sessions, ids, strict=True)))
            t2 = time.perf_counter()
            if step:  # the prompt's prefill is not a decode step
                base_t.append(t1 - t0)
                chain_t.append(t2 - t1)
            token = int(logits.argmax())
            assert all(int(o.argmax()) == token for o in outs), "a chain disagreed with the whole model"
            x, ids = torch.tensor([token]), [[token]] * len(sessions)
        overheads = [o for s in sessions for o in s.hop_overheads]
        for s in sessions:
            await s.close()
        return sum(base_t) / sum(chain_t) * len(sessions), chain_t, overheads

    async def stop_all() -> None:
        for srv, _ in servers:
            await srv.stop(0)
        servers.clear()

    def p(values: list[float], q: float) -> str:
        return fmt_ms(percentile(values, q) * 1000)

    rows: list[tuple[str, float, float, str, str, str]] = []

    def row(label: str, ratio: float, rate: float, interleaved: str, p99: str, own: str) -> None:
        rows.append((label, ratio, rate, interleaved, p99, own))
        print(rows[-1], flush=True)

    splits = {1: [(0, blocks)], 2: [(0, 6), (6, blocks)], 3: [(0, 4), (4, 8), (8, blocks)]}
    for hops, ranges in splits.items():
        await serve(ranges)
        await race(f"warm{hops}", [None])  # channels and TLS sessions up, caches warm
        servers_ = f"{hops} stage server{'s' if hops > 1 else ''}"
        ratio, steps, seen, ring = await in_blocks(f"o{hops}", "ring")
        label = f"{servers_}, one session, decoding on its own"
        row(
            label,
            ratio,
            1 / statistics.median(steps),
            p(seen, 50),
            p(seen, 99),
            f"{p(ring, 50)} / {p(ring, 99)}",
        )
        for mode in ("push", "relay") if hops > 1 else ("push",):
            ratio, steps, overheads = await race(f"{mode}{hops}", [None], push=mode == "push")
            own, _, _ = await alone(f"a{mode}{hops}", mode)
            label = f"{servers_}, one session, the caller driving each step" + (
                ", relaying every hop" if mode == "relay" else ""
            )
            own_p = f"{p(own, 50)} / {p(own, 99)}"
            row(label, ratio, 1 / statistics.median(steps), p(overheads, 50), p(overheads, 99), own_p)
        if hops == 2:
            base = statistics.median(whole_steps("w8"))
            t0 = time.perf_counter()
            await asyncio.gather(*(alone(f"s8-{i}", "ring") for i in range(8)))
            rate = 8 * tokens / (time.perf_counter() - t0)
            row("2 stage servers, 8 sessions, decoding on their own", rate * base, rate, "–", "–", "–")
            ratio, steps, overheads = await race("c8", [None] * 8)
            row(
                "2 stage servers, 8 sessions, the caller driving each step",
                ratio,
                8 / statistics.median(steps),
                p(overheads, 50),
                p(overheads, 99),
                "–",
            )
            # The caller 5 ms (each way) from its nodes, which are close to each other.
            proxies = [DelayProxy(srv.address, DISTANT_S) for srv, _ in servers]
            via = {srv.address: await px.start() for (srv, _), px in zip(servers, proxies, strict=True)}

            def far(address: str, node_id: str, via: dict[str, str] = via) -> Peer:
                return Peer(client, via.get(address, address), node_id)

            for mode, how in (("ring", "decoding on its own"), ("push", "the caller driving each step")):
                ratio, steps, _, _ = await in_blocks(f"far{mode}", mode, far)
                label = f"2 stage servers, the caller {DISTANT_S * 1000:g} ms away, {how}"
                row(label, ratio, 1 / statistics.median(steps), "–", "–", "–")
            for px in proxies:
                await px.stop()
            await serve(ranges, standby=True)  # a second node for each range: the verifiers
            for rate in (0.05, 1.0):
                ratio, steps, _ = await race(f"k{rate}", [checked(rate)])
                row(
                    f"2 stage servers, {rate:.0%} of steps checked",
                    ratio,
                    1 / statistics.median(steps),
                    "–",
                    "–",
                    "–",
                )
        await stop_all()

    print()
    where = "each in a process of its own" if processes else "all in this process"
    print(f"model: {blocks} blocks, width {width}; {tokens} greedy tokens per run; torch threads 1")
    print(f"stage servers: {where}")
    columns = [
        "configuration",
        "tokens/s ÷ whole model's (interleaved)",
        "tokens/s (median step)",
        "added per hop p50 ms, interleaved †",
        "p99 ms",
        "added per hop p50 / p99 ms, chain alone ‡",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for label, ratio, rate, p50, p99, own in rows:
        print(f"| {label} | {ratio:.2f} | {rate:.1f} | {p50} | {p99} | {own} |")
    print()
    print("† decoding on its own: as the caller sees each token arrive (a ring cannot be interleaved)")
    print(
        "‡ decoding on its own: from one step to the next on the ring's first node, less every node's compute"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer tokens")
    parser.add_argument(
        "--processes", action="store_true", help="each stage server in a process of its own, as nodes run"
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.processes))
