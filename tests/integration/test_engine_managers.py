"""The vLLM and llama.cpp managers running the stand-in server as they would run the real one.

Each test launches ``python -m phage.node.engines.standin`` through the engine's
command override, so argv building, the health wait, the watchdog, model
switching and shutdown all act on a real subprocess over real HTTP.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from phage.errors import EngineError
from phage.node.engines import make_engine
from phage.node.engines.base import ChatMessage, GenerationRequest
from phage.node.engines.managed import ManagedServerEngine, free_port
from phage.node.engines.openai_compat import OpenAIEngine

pytestmark = pytest.mark.backend_neutral  # engine servers supervised on a node; the store is not involved

STANDIN = [sys.executable, "-m", "phage.node.engines.standin"]
CHAT = GenerationRequest(messages=(ChatMessage("user", "say something"),), max_tokens=5)


async def _until(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0) -> float:
    """Poll ``check`` (plain or async) until it holds; the seconds it took."""
    began = time.monotonic()
    while not await _holds(check()):
        assert time.monotonic() - began < timeout_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def _holds(value: bool | Awaitable[bool]) -> bool:
    return await value if inspect.isawaitable(value) else bool(value)


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
async def managed(tmp_path: Path) -> AsyncIterator[Callable[..., ManagedServerEngine]]:
    """Factory: ``managed("vllm", model, **options)`` makes an engine on the stand-in; closed afterwards."""
    made: list[ManagedServerEngine] = []

    def make(
        kind: str, model: str, *, env: dict[str, str] | None = None, **options: Any
    ) -> ManagedServerEngine:
        engine = make_engine(
            kind, model, **{"command": STANDIN, "log_dir": tmp_path / "logs", "env": env or {}, **options}
        )
        assert isinstance(engine, ManagedServerEngine)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()


async def test_vllm_manager_serves_streams_and_counts(managed: Callable[..., ManagedServerEngine]) -> None:
    engine = managed("vllm", "org/model-a", model_name="a", gpu_memory_utilization=0.5, max_model_len=2048)
    began = time.monotonic()
    await engine.start()
    print(f"\nvllm stand-in healthy {time.monotonic() - began:.2f} s after start()")
    assert engine.process is not None and engine.port is not None
    assert await engine.health() and engine.models() == ["a"] and engine.model == "a"
    head = engine.log_path.read_text().splitlines()[0]
    assert "serve org/model-a --host 127.0.0.1 --port" in head and "--served-model-name a" in head

    deltas = [d async for d in engine.stream(CHAT)]
    assert "".join(d.text for d in deltas) == "token0 token1 token2 token3 token4"
    assert (deltas[-1].finish_reason, deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (
        "length",
        2,
        5,
    )
    gen = await engine.generate(GenerationRequest(prompt="a b c d", max_tokens=100, stop=[" token3"]))
    assert (gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens) == (
        "token0 token1 token2",
        "stop",
        4,
        4,
    )
    async with httpx.AsyncClient(base_url=engine.url) as client:  # the server's non-streaming path
        body = (
            await client.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 3})
        ).json()
    assert body["choices"][0]["text"] == "token0 token1 token2" and body["usage"]["completion_tokens"] == 3


async def test_llamacpp_manager_names_the_model_after_the_file(
    managed: Callable[..., ManagedServerEngine], tmp_path: Path
) -> None:
    gguf = tmp_path / "qwen-0.5b-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    engine = managed("llamacpp", str(gguf), max_model_len=1024, gpu_layers=0)
    await engine.start()
    assert engine.model == "qwen-0.5b-q4_k_m" and engine.models() == ["qwen-0.5b-q4_k_m"]
    head = engine.log_path.read_text().splitlines()[0]
    assert f"-m {gguf} --host 127.0.0.1" in head and "-c 1024 -ngl 0 --alias qwen-0.5b-q4_k_m" in head
    gen = await engine.generate(GenerationRequest(prompt="hi", max_tokens=2))
    assert (gen.text, gen.completion_tokens) == ("token0 token1", 2)


async def test_a_crashed_server_is_restarted_and_serves_again(
    managed: Callable[..., ManagedServerEngine],
) -> None:
    engine = managed("vllm", "m", env={"PHAGE_STANDIN_CRASH_AFTER": "1"})
    await engine.start()
    first = engine.process
    assert first is not None
    assert (await engine.generate(CHAT)).completion_tokens == 5  # the stand-in dies right after this one
    await first.wait()
    took = await _until(lambda: engine.restarts == 1 and engine._ready.is_set())
    print(f"\nrestarted {took:.2f} s after the crash (server healthy {engine.started_s:.2f} s after launch)")
    assert engine.process is not first and await engine.health()
    assert (await engine.generate(CHAT)).text == "token0 token1 token2 token3 token4"


async def test_a_request_during_a_restart_waits_for_the_server(
    managed: Callable[..., ManagedServerEngine],
) -> None:
    engine = managed(
        "vllm", "m", env={"PHAGE_STANDIN_CRASH_AFTER": "1", "PHAGE_STANDIN_STARTUP_DELAY_MS": "300"}
    )
    await engine.start()
    await engine.generate(CHAT)
    assert engine.process is not None
    await engine.process.wait()
    await _until(lambda: not engine._ready.is_set())
    assert (await engine.generate(CHAT)).completion_tokens == 5
    assert engine.restarts == 1


async def test_load_switches_models_by_restarting(managed: Callable[..., ManagedServerEngine]) -> None:
    engine = managed("vllm", "org/model-a", model_name="a")
    await engine.start()
    assert engine.can_load and engine.process is not None
    old = engine.process.pid
    began = time.monotonic()
    await engine.load("org/model-b")
    print(f"\nswitched models in {time.monotonic() - began:.2f} s")
    assert _gone(old) and engine.process.pid != old
    assert engine.model == "org/model-b" and engine.models() == ["org/model-b"]
    assert (await engine.generate(CHAT)).completion_tokens == 5
    assert engine.restarts == 0  # a switch is not a crash


async def test_a_failed_switch_goes_back_to_the_previous_model(
    managed: Callable[..., ManagedServerEngine], tmp_path: Path
) -> None:
    bad = str(tmp_path / "bad.gguf")
    engine = managed("llamacpp", str(tmp_path / "good.gguf"), env={"PHAGE_STANDIN_FAIL_MODEL": bad})
    await engine.start()
    with pytest.raises(EngineError, match=r"cannot load .*bad\.gguf(.|\n)*failed to load model"):
        await engine.load(bad)
    assert engine.model == "good" and await engine.health()
    assert (await engine.generate(CHAT)).completion_tokens == 5


async def test_closing_a_stream_early_stops_generation_on_the_server(
    managed: Callable[..., ManagedServerEngine],
) -> None:
    engine = managed("vllm", "m", env={"PHAGE_STANDIN_TOKEN_DELAY_MS": "10"})
    await engine.start()
    stream = engine.stream(GenerationRequest(prompt="go", max_tokens=1000))
    texts = [(await anext(stream)).text for _ in range(3)]
    assert texts == ["token0", " token1", " token2"]
    await stream.aclose()  # type: ignore[attr-defined]

    async def stats() -> dict[str, int]:
        async with httpx.AsyncClient(base_url=engine.url) as client:
            return dict((await client.get("/stats")).json())

    await _until(lambda: _cancelled(stats))
    counts = await stats()
    assert counts["started"] == 1 and counts["finished"] == 0 and counts["cancelled"] == 1
    assert counts["tokens"] < 50, counts  # stopped long before max_tokens=1000


async def _cancelled(stats: Callable[[], Awaitable[dict[str, int]]]) -> bool:
    return (await stats())["cancelled"] == 1


async def test_close_leaves_no_process(managed: Callable[..., ManagedServerEngine]) -> None:
    engine = managed("llamacpp", "m.gguf")
    await engine.start()
    assert engine.process is not None
    pid = engine.process.pid
    began = time.monotonic()
    await engine.close()
    print(f"\nclosed in {time.monotonic() - began:.2f} s")
    assert engine.process.returncode is not None and _gone(pid)
    with pytest.raises(EngineError, match="closed"):
        await engine.generate(CHAT)


async def test_a_missing_command_is_a_clear_error(managed: Callable[..., ManagedServerEngine]) -> None:
    engine = managed("vllm", "m", command=["/nonexistent/vllm"])
    with pytest.raises(EngineError, match="cannot run the vllm server `/nonexistent/vllm serve m"):
        await engine.start()


async def test_a_server_that_exits_at_once_names_the_command_and_its_output(
    managed: Callable[..., ManagedServerEngine],
) -> None:
    crash = [sys.executable, "-c", "import sys; print('no CUDA device', file=sys.stderr); sys.exit(3)"]
    engine = managed("llamacpp", "m.gguf", command=crash)
    with pytest.raises(EngineError) as caught:
        await engine.start()
    message = caught.value.message
    assert "exited with code 3 before it was ready" in message
    assert "-m m.gguf --host 127.0.0.1" in message and "no CUDA device" in message
    with pytest.raises(EngineError, match=r"not running: .*exited with code 3"):
        await engine.generate(CHAT)  # at once, not after the startup timeout


async def test_a_server_that_never_gets_ready_times_out_and_is_stopped(
    managed: Callable[..., ManagedServerEngine],
) -> None:
    engine = managed("vllm", "m", env={"PHAGE_STANDIN_STARTUP_DELAY_MS": "10000"}, startup_timeout_s=0.5)
    with pytest.raises(EngineError, match=r"not ready after 0\.5 s"):
        await engine.start()
    assert engine.process is not None and engine.process.returncode is not None
    assert _gone(engine.process.pid)


async def test_openai_engine_against_a_server_started_separately(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "standin.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            *STANDIN, "serve", "ollama-model", "--port", str(port), stdout=log, stderr=log
        )
    engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", api_key="secret")
    try:
        await _until(engine.health)
        await engine.start()
        assert engine.model == "ollama-model" and engine.models() == ["ollama-model"]
        deltas = [d async for d in engine.stream(CHAT)]
        # one network read may carry several tokens: they arrive as one delta
        assert "".join(d.text for d in deltas) == "token0 token1 token2 token3 token4"
        assert deltas[-1].final and deltas[-1].completion_tokens == 5
    finally:
        await engine.close()
        server.terminate()
        await server.wait()
