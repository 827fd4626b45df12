"""What phage adds to a streamed chat, beside LiteLLM's proxy in front of the same engine.

One engine — the stand-in OpenAI-compatible server (``python -m
phage.node.engines.standin``), pacing its tokens like a GPU would — is reached
three ways in one run:

* **direct**: the client calls the engine itself (the floor);
* **phage**: client → coordinator (HTTP, SSE) → gRPC stream over mutual TLS →
  node → the engine (``phage node --engine openai --engine-url …``);
* **litellm**: client → LiteLLM's proxy (one worker) → the engine.

For 1, 16 and 64 concurrent streams it measures time to first token and the
gap between tokens (p50/p99) and streams completed per second, and reports
what each proxy adds over direct::

    python bench/chat_proxy.py                  # the full run (a few minutes)
    python bench/chat_proxy.py --quick          # a short smoke run
    python bench/chat_proxy.py --check-rates 0,0.05,1   # checked chat: its cost and client latency
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _util import clean_nan, fmt_ms, machine_info, percentile, write_results
from rich.console import Console
from rich.table import Table

from phage.testing import CoordinatorProcess, NodeProcess, free_port, wait_online, wait_until

MODEL = "standin-7b"
console = Console()


@dataclass
class Sample:
    """One stream's timings (seconds)."""

    ttft: float
    gaps: list[float]
    tokens: int
    total: float


@dataclass
class Run:
    """One system at one concurrency."""

    system: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ttft = [s.ttft for s in self.samples]
        gaps = [g for s in self.samples for g in s.gaps]
        return {
            "system": self.system,
            "concurrency": self.concurrency,
            "streams": len(self.samples),
            "errors": self.errors,
            "streams_per_s": len(self.samples) / self.wall_s if self.wall_s else 0.0,
            "ttft_p50_ms": percentile(ttft, 50) * 1000,
            "ttft_p99_ms": percentile(ttft, 99) * 1000,
            "gap_p50_ms": percentile(gaps, 50) * 1000,
            "gap_p99_ms": percentile(gaps, 99) * 1000,
        }


async def one_stream(
    session: aiohttp.ClientSession, url: str, key: str, max_tokens: int, model: str = MODEL
) -> Sample:
    """POST a streamed chat and time its chunks as they arrive."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"]))
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    arrivals.append(time.perf_counter())
    if not arrivals:
        raise RuntimeError("no tokens")
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return Sample(arrivals[0] - start, gaps, len(arrivals), time.perf_counter() - start)


async def drive(
    system: str, url: str, key: str, concurrency: int, streams: int, max_tokens: int, model: str = MODEL
) -> Run:
    """``streams`` streams, ``concurrency`` at a time, over one connection pool."""
    run = Run(system, concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(min(concurrency, 4)):  # warm connections and caches
            with contextlib.suppress(Exception):
                await one_stream(session, url, key, 4, model)
        left = streams

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                try:
                    run.samples.append(await one_stream(session, url, key, max_tokens, model))
                except Exception as exc:  # counted, and the first few shown
                    run.errors += 1
                    if run.errors <= 3:
                        console.print(f"[red]{system}: {exc}[/]")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - t0
    return run


def start_engine(tmp: Path, port: int, delay_ms: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PHAGE_STANDIN_TOKEN_DELAY_MS": str(delay_ms)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "phage.node.engines.standin", "serve", MODEL, "--port", str(port)],
        env=env,
        stdout=(tmp / "engine.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until(lambda: _ok(f"http://127.0.0.1:{port}/health"), 30, what="engine")
    return proc


LITELLM_KEY = "sk-" + os.urandom(16).hex()
"""The proxy's master key: it checks it on every request, as phage checks its API keys."""


def start_litellm(tmp: Path, port: int, engine_port: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("litellm") or str(Path(sys.executable).parent / "litellm")
    if not Path(exe).exists():
        console.print("[yellow]litellm not installed (pip install 'litellm[proxy]'): skipping it[/]")
        return None
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{engine_port}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
    )
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "true",
        "LITELLM_MASTER_KEY": LITELLM_KEY,
    }
    proc = subprocess.Popen(
        [exe, "--config", str(config), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
        env=env,
        stdout=(tmp / "litellm.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"litellm exited; see {tmp / 'litellm.log'}")
        return _ok(f"http://127.0.0.1:{port}/health/liveliness")

    wait_until(up, 120, what="litellm proxy")
    return proc


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrent streams")
    ap.add_argument(
        "--streams", type=int, default=0, help="streams per step (default: 60 or 6 × concurrency)"
    )
    ap.add_argument("--tokens", type=int, default=32, help="tokens per stream")
    ap.add_argument("--token-delay-ms", type=float, default=5.0, help="the engine's pace per token")
    ap.add_argument("--systems", default="direct,phage,litellm")
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument(
        "--check-rates",
        default="",
        help="instead: checked-chat rows at these check rates (e.g. 0,0.05,1), on a tiny local model",
    )
    args = ap.parse_args()
    if args.check_rates:
        from chat_check import check_rows

        check_rows([float(x) for x in args.check_rates.split(",")], args)
        return
    levels = [int(x) for x in args.concurrency.split(",")]
    systems = args.systems.split(",")
    if args.quick:
        levels, args.streams = [1, 16], 32

    tmp = Path(tempfile.mkdtemp(prefix="phage-bench-chat-"))
    engine_port, litellm_port = free_port(), free_port()
    engine = start_engine(tmp, engine_port, args.token_delay_ms)
    coord: CoordinatorProcess | None = None
    node: NodeProcess | None = None
    litellm = None
    urls: dict[str, tuple[str, str]] = {
        "direct": (f"http://127.0.0.1:{engine_port}/v1/chat/completions", "none")
    }
    try:
        if "phage" in systems:
            coord = CoordinatorProcess(tmp / "coordinator", heartbeat_s=2.0).start()
            node = NodeProcess(
                coord,
                tmp / "node",
                name="bench-node",
                heartbeat_s=2.0,
                engine="openai",
                model=MODEL,
                args=("--engine-url", f"http://127.0.0.1:{engine_port}"),
            ).start()
            wait_online(coord, 1, timeout=60)
            wait_until(lambda: _models(coord) == [MODEL], 60, what="model listed")
            urls["phage"] = (f"{coord.url}/v1/chat/completions", coord.admin_key)
        if "litellm" in systems:
            litellm = start_litellm(tmp, litellm_port, engine_port)
            if litellm is not None:
                urls["litellm"] = (f"http://127.0.0.1:{litellm_port}/v1/chat/completions", LITELLM_KEY)

        results: list[dict[str, Any]] = []
        for c in levels:
            streams = args.streams or max(60, 6 * c)
            for system in systems:
                if system not in urls:
                    continue
                url, key = urls[system]
                console.print(f"[dim]{system}: {streams} streams, {c} at a time…[/]")
                run = asyncio.run(drive(system, url, key, c, streams, args.tokens))
                results.append(run.summary())
        report(results, args)
        payload = {
            "machine": machine_info(),
            "args": vars(args),
            "results": clean_nan(results),
            "command": " ".join(sys.argv),
        }
        console.print(f"results: {write_results('chat_proxy', payload)}")
    finally:
        for p in (node, coord):
            if p is not None:
                p.stop()
        _stop(litellm)
        _stop(engine)


def _models(coord: CoordinatorProcess) -> list[str]:
    with coord.client() as c:
        return [m["id"] for m in c.get("/v1/models").json().get("data", [])]


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The side-by-side table, with what each proxy adds over calling the engine directly."""
    table = Table(
        title=f"streamed chat, {args.tokens} tokens a stream, engine pace {args.token_delay_ms} ms/token",
    )
    for col in (
        "streams",
        "system",
        "streams/s",
        "TTFT p50",
        "TTFT p99",
        "added p50",
        "gap p50",
        "gap p99",
        "added gap p50",
        "errors",
    ):
        table.add_column(col, justify="right")
    direct = {r["concurrency"]: r for r in results if r["system"] == "direct"}
    for r in results:
        d = direct.get(r["concurrency"])
        added = r["ttft_p50_ms"] - d["ttft_p50_ms"] if d and r["system"] != "direct" else None
        added_gap = r["gap_p50_ms"] - d["gap_p50_ms"] if d and r["system"] != "direct" else None
        table.add_row(
            str(r["concurrency"]),
            r["system"],
            f"{r['streams_per_s']:.1f}",
            fmt_ms(r["ttft_p50_ms"]),
            fmt_ms(r["ttft_p99_ms"]),
            fmt_ms(added),
            fmt_ms(r["gap_p50_ms"]),
            fmt_ms(r["gap_p99_ms"]),
            fmt_ms(added_gap),
            str(r["errors"]),
        )
    console.print(table)
    by = {(r["system"], r["concurrency"]): r for r in results}
    for c in sorted({r["concurrency"] for r in results}):
        p, lt = by.get(("phage", c)), by.get(("litellm", c))
        if p and lt and lt["streams_per_s"]:
            ratio = p["streams_per_s"] / lt["streams_per_s"]
            console.print(f"{c} streams: phage / litellm streams per second = {ratio:.2f}×")


if __name__ == "__main__":
    main()
