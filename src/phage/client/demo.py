"""``phage demo``: a whole pool on loopback, doing real work, in one command.

Starts a coordinator (temporary data directory, SQLite) and node processes
that join it over mutual TLS, submits sample jobs, shows them move to
``verified`` live, prints their outputs, and tears everything down, on its
own or at Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel

from phage.api.models import Task
from phage.client.render import tasks_table
from phage.client.sdk import PhageClient
from phage.errors import PhageError

PRIMES = """
import json, math
N = 2_000_000
sieve = bytearray([1]) * (N + 1)
sieve[0:2] = b"\\x00\\x00"
for i in range(2, math.isqrt(N) + 1):
    if sieve[i]:
        sieve[i * i :: i] = bytes(len(range(i * i, N + 1, i)))
primes = [i for i in range(N + 1) if sieve[i]]
open("primes.txt", "w").write("\\n".join(map(str, primes[-100:])) + "\\n")
json.dump({"below": N, "count": len(primes), "largest": primes[-1]}, open("summary.json", "w"))
print(f"{len(primes)} primes below {N}; largest {primes[-1]}")
"""

MANDELBROT = """
W, H, ITER = 240, 160, 200
rows = []
for y in range(H):
    row = bytearray()
    for x in range(W):
        c = complex(-2.2 + 3.2 * x / W, -1.2 + 2.4 * y / H)
        z, n = 0j, 0
        while abs(z) <= 2 and n < ITER:
            z = z * z + c
            n += 1
        row.append(255 - int(255 * n / ITER))
    rows.append(bytes(row))
with open("mandelbrot.pgm", "wb") as fh:
    fh.write(f"P5 {W} {H} 255\\n".encode() + b"".join(rows))
print(f"rendered {W}x{H} Mandelbrot set, {ITER} iterations")
"""

WORDS = """
import collections, json, re
text = open("corpus.txt").read().lower()
words = re.findall(r"[a-z']+", text)
top = collections.Counter(words).most_common(10)
json.dump(dict(top), open("top-words.json", "w"), indent=1)
print(f"{len(words)} words, {len(set(words))} distinct; top: {top[0][0]!r}")
"""

CORPUS = (
    "Many small machines, each with an owner and a life of its own, can be one dependable service. "
    "A machine may vanish at any moment; the work it held is not lost, it is given to another. "
    "Results are checked before anyone sees them, and every machine proves who it is. "
) * 200

PI = """
import random
random.seed(7)
n = 1_500_000
inside = sum(1 for _ in range(n) if random.random() ** 2 + random.random() ** 2 <= 1.0)
open("pi.txt", "w").write(f"{4 * inside / n:.5f}\\n")
print(f"pi ~ {4 * inside / n:.5f} from {n} samples")
"""

CHECKSUMS = """#!/bin/sh
set -e
mkdir -p data
for i in 1 2 3 4 5; do head -c 200000 /dev/zero | tr '\\0' "$i" > data/block$i; done
sha256sum data/* > checksums.txt
wc -l < checksums.txt
"""


def sample_jobs() -> list[tuple[str, dict[str, Any]]]:
    """(title, task) pairs for the demo."""

    def job(
        entry: str, files: dict[str, str], outputs: list[str], interpreter: str = "python3"
    ) -> dict[str, Any]:
        return {
            "kind": "job",
            "files": files,
            "manifest": {
                "entrypoint": entry,
                "interpreter": interpreter,
                "outputs": outputs,
                "timeout_s": 120,
            },
        }

    return [
        ("primes below two million", job("primes.py", {"primes.py": PRIMES}, ["primes.txt", "summary.json"])),
        ("Mandelbrot image", job("render.py", {"render.py": MANDELBROT}, ["*.pgm"])),
        ("word frequencies", job("count.py", {"count.py": WORDS, "corpus.txt": CORPUS}, ["top-words.json"])),
        ("Monte Carlo pi", job("pi.py", {"pi.py": PI}, ["pi.txt"])),
        ("checksums (shell)", job("run.sh", {"run.sh": CHECKSUMS}, ["checksums.txt"], interpreter="sh")),
        ("noop x20 (queue only)", {"kind": "noop", "count": 20}),
    ]


GENERATE_VERIFIER = "test -s output.txt && test $(wc -c < output.txt) -le 80"


def generate_task() -> dict[str, Any]:
    """A best-of-N generate task for the demo's tiny model."""
    return {
        "kind": "generate",
        "prompt": "def add(a, b):",
        "model": "tiny-llama",
        "verifier": GENERATE_VERIFIER,
        "n": 2,
        "distinct": "prefer",
        "max_tokens": 32,
        "temperature": 1.0,
        "max_attempts": 2,
    }


def pick_sandbox() -> tuple[str, str]:
    """(backend, note): the default real sandbox here (bwrap, else gVisor), or ``none`` with the reason."""
    from phage.errors import SandboxError
    from phage.sandbox import make_sandbox

    try:
        backend = make_sandbox(None).name
        return backend, f"{backend} (no network, read-only root, scratch-only writes, limits)"
    except SandboxError as exc:
        return "none", f"none: UNISOLATED, because {exc.message}"


def make_model(root: Path) -> Path | None:
    """The tiny local model for the generate task, or None when transformers is not installed."""
    try:
        from phage.node.engines.tinymodel import make_tiny_model

        return make_tiny_model(root / "tiny-llama")
    except ImportError:
        return None


async def _spawn_node(
    i: int, info: Any, root: Path, heartbeat: float, sandbox: str, model: Path | None
) -> asyncio.subprocess.Process:
    argv = [
        sys.executable, "-m", "phage.client.cli", "node",
        "--coordinator", info.grpc_address, "--enroll", info.enroll_address,
        "--ca-fingerprint", info.ca_fingerprint,
        "--key-dir", str(root / f"node-{i}"), "--name", f"demo-node-{i}",
        "--sandbox", sandbox, "--concurrency", "2", "--heartbeat", str(heartbeat),
    ]  # fmt: skip
    if model is not None:
        argv += ["--engine", "transformers", "--model", str(model)]
    log = (root / f"node-{i}.log").open("wb")
    env = {**os.environ, "PHAGE_JOIN_TOKEN": info.join_token}  # never in argv
    return await asyncio.create_subprocess_exec(
        *argv, stdout=log, stderr=log, start_new_session=True, env=env
    )


def _describe(t: Task, title: str, base_url: str) -> str:
    result = t.result
    lines = [f"[bold]{title}[/] · {t.state}"]
    if t.kind == "generate":
        for a in t.attempts or []:
            mark = "★ kept" if result is not None and a.id == result.attempt_id else ""
            verdict = "pass" if a.passed else "fail"
            lines.append(f"  attempt on {a.node_id[:10]}…  {a.completion_tokens} tokens  {verdict}  {mark}")
        if result is not None:
            lines.append(f"  output: {result.output_text or ''!r}")
    elif result is not None:
        lines[0] += f" · exit {result.exit_code}"
        if result.stdout_tail:
            lines.append("  " + result.stdout_tail.strip()[-300:])
    for o in result.outputs if result else []:
        lines.append(f"  ↳ {o.path} ({o.size} bytes)  {base_url}{o.url}")
    return "\n".join(lines)


async def _demo_chat(console: Console, client: PhageClient, url: str) -> bool:
    """Stream one chat completion through the coordinator, as any OpenAI client would."""
    console.print(
        f"\n[bold]streamed chat[/] · POST {url}/v1/chat/completions (OpenAI-compatible, SSE) · "
        "the tiny model's words are random"
    )
    started = time.monotonic()
    first: float | None = None
    usage: dict[str, Any] = {}
    pieces = 0
    try:
        console.print("[dim]assistant:[/] ", end="")
        async for chunk in client.chat_stream(
            "tiny-llama", [{"role": "user", "content": "Say hello to the pool."}], max_tokens=32
        ):
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    first = first or time.monotonic()
                    pieces += 1
                    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
            usage = chunk.get("usage") or usage
    except PhageError as exc:
        console.print(f"\n[red]chat failed: {exc.message}[/]")
        return False
    console.print()
    ttft = f"{(first - started) * 1000:.0f} ms" if first else "—"
    console.print(
        f"[green]chat streamed[/] {pieces} pieces · first token after {ttft} · "
        f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens "
        "metered to the admin key (see [bold]phage usage[/])"
    )
    return bool(usage)


async def run_demo(console: Console, *, nodes: int = 2, keep: bool = False, http_port: int = 0) -> int:
    """Run the demo; returns a process exit code (0 when every task verified)."""
    from phage.coordinator.server import CoordinatorServer
    from phage.coordinator.settings import CoordinatorSettings

    root = Path(tempfile.mkdtemp(prefix="phage-demo-"))
    sandbox, sandbox_note = pick_sandbox()
    settings = CoordinatorSettings(
        data_dir=root / "coordinator",
        http_port=http_port,
        grpc_port=0,
        enroll_port=0,
        heartbeat_interval_s=2.0,
        verify_sandbox=sandbox,
    )
    server = CoordinatorServer(settings)
    procs: list[asyncio.subprocess.Process] = []
    try:
        info = await server.start()
        with console.status("making a tiny local model for the generate task…"):
            model = await asyncio.to_thread(make_model, root)
        console.print(
            Panel.fit(
                f"coordinator  {info.http_url}  (API docs at /docs)\n"
                f"node gRPC    {info.grpc_address} · mutual TLS · CA {info.ca_fingerprint[:23]}…\n"
                f"data         {root}\n"
                f"sandbox      {sandbox_note}\n"
                f"engine       "
                + (
                    "transformers, tiny-llama (random weights, made locally)"
                    if model
                    else "none (install phage[transformers] for the generate task)"
                ),
                title="phage demo",
            )
        )
        procs = [await _spawn_node(i + 1, info, root, 2.0, sandbox, model) for i in range(nodes)]
        async with PhageClient(info.http_url, info.admin_key) as client:
            with console.status(f"waiting for {nodes} nodes to join…"):
                deadline = time.monotonic() + 90
                while len([n for n in await client.nodes() if n.state == "online"]) < nodes:
                    if time.monotonic() > deadline:
                        console.print("[red]nodes did not join; see their logs in[/]", root)
                        return 1
                    await asyncio.sleep(0.1)
            console.print(f"[green]{nodes} nodes joined over mTLS[/]")
            work = sample_jobs()
            if model is not None:
                work.append(("best-of-2 generate (tiny model, verifier: ≤ 80 bytes)", generate_task()))
            ids: list[tuple[str, str]] = []
            for title, task in work:
                made = await client.submit_many([task])
                ids.extend((title, t.id) for t in made)
            start = time.monotonic()
            final: list[Task] = []
            with Live(console=console, refresh_per_second=8) as live:
                while True:
                    final = [await client.get(tid) for _, tid in ids]
                    shown = [t for t in final if t.kind != "noop"]
                    noops = [t for t in final if t.kind == "noop"]
                    done_noop = sum(t.succeeded for t in noops)
                    live.update(
                        Group(
                            tasks_table(shown, title=f"tasks · {time.monotonic() - start:.1f}s"),
                            f"no-op tasks verified: {done_noop}/{len(noops)}",
                        )
                    )
                    if all(t.final for t in final):
                        break
                    await asyncio.sleep(0.2)
            titles = {tid: title for title, tid in ids}
            for t in final:
                if t.kind != "noop":
                    console.print(_describe(t, titles[t.id], info.http_url))
            ok = all(t.succeeded for t in final if t.kind != "generate")
            verified = sum(t.succeeded for t in final)
            console.print(
                f"\n[bold {'green' if ok else 'red'}]{verified}/{len(final)} tasks verified[/] "
                f"in {time.monotonic() - start:.1f}s"
            )
            if any(t.kind == "generate" and not t.succeeded for t in final):
                console.print(
                    "[yellow]the tiny model writes random text: this time no attempt passed its "
                    "verifier, which phage reports as a failed task with every attempt kept[/]"
                )
            if model is not None:
                ok = await _demo_chat(console, client, info.http_url) and ok
            if keep:
                console.print(f"pool stays up: {info.http_url}  admin key: {info.admin_key}\nCtrl-C to stop.")
                await asyncio.Event().wait()
            return 0 if ok else 1
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
        await server.stop()
        console.print("[dim]stopped coordinator and nodes[/]")
