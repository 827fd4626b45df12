"""Prompts against the model's context: refused before any work (a 400 naming the limit), and a
prefill that stops when the client leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from phage.errors import InvalidInput
from phage.node.engines.base import ChatMessage, GenerationRequest
from phage.node.engines.openai_compat import OpenAIEngine
from phage.node.engines.standin import Standin
from phage.node.engines.transformers import TransformersEngine
from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until

pytestmark = pytest.mark.backend_neutral  # context limits in the engine; the store is not what is tested
pytest.importorskip("transformers")


@pytest.fixture
async def engine(tiny_model: Path) -> AsyncIterator[TransformersEngine]:
    made = TransformersEngine(str(tiny_model), prefill_chunk=16)
    await made.start()
    yield made
    await made.close()


def words(n: int) -> str:
    return " ".join(f"w{i % 10}" for i in range(n))


async def test_a_prompt_longer_than_the_context_is_refused_at_once(engine: TransformersEngine) -> None:
    assert engine.context_length == 512
    calls = 0

    def count(*_: Any) -> None:
        nonlocal calls
        calls += 1

    engine._model.register_forward_pre_hook(count)
    for request in (
        GenerationRequest(prompt=words(2000), max_tokens=4),
        GenerationRequest(messages=(ChatMessage("user", words(2000)),), max_tokens=4),
        GenerationRequest(prompt="x" * 10_000_000, max_tokens=4),  # refused without tokenizing
    ):
        started = time.monotonic()
        with pytest.raises(InvalidInput, match="512 tokens") as info:
            await engine.generate(request)
        assert time.monotonic() - started < 2
        assert info.value.field == ("messages" if request.is_chat else "prompt")
    assert calls == 0  # no forward step ran


async def test_chunked_prefill_gives_the_same_completion(
    engine: TransformersEngine, tiny_model: Path
) -> None:
    request = GenerationRequest(prompt=words(40), max_tokens=8, temperature=0)
    chunked = await engine.generate(request)
    whole = TransformersEngine(str(tiny_model), prefill_chunk=100_000)
    await whole.start()
    try:
        assert (await whole.generate(request)).text == chunked.text
    finally:
        await whole.close()
    assert chunked.prompt_tokens > 16 and chunked.completion_tokens == 8


async def test_a_prefill_stops_when_the_client_leaves(engine: TransformersEngine) -> None:
    # a slow accelerator: every prompt token costs 10 ms, so the whole prefill would take about 4.5 s
    steps = 0

    def slow(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        nonlocal steps
        steps += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        time.sleep(0.01 * int(ids.shape[1]))

    engine._model.register_forward_pre_hook(slow, with_kwargs=True)
    stream = engine.stream(GenerationRequest(prompt=words(150), max_tokens=4))
    first = asyncio.ensure_future(anext(stream))
    deadline = time.monotonic() + 10
    while steps == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    left = time.monotonic()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await stream.aclose()  # the client hung up
    assert time.monotonic() - left < 1.0  # within a chunk (16 tokens: 0.16 s), not the whole prompt
    assert steps <= 3, steps


async def test_an_openai_compatible_server_refusing_a_long_prompt_is_invalid_input() -> None:
    # vLLM checks a prompt against max_model_len before any work and answers 400
    engine = OpenAIEngine(
        "http://standin", "", transport=httpx.ASGITransport(app=Standin("m", max_model_len=64))
    )
    await engine.start()
    with pytest.raises(InvalidInput, match="maximum context length is 64 tokens") as info:
        await engine.generate(GenerationRequest(messages=(ChatMessage("user", words(100)),)))
    assert info.value.field == "messages"
    assert (await engine.generate(GenerationRequest(prompt=words(10), max_tokens=3))).completion_tokens == 3
    await engine.close()


def test_a_chat_longer_than_the_context_gets_a_400_naming_the_limit(
    pool: Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]], tiny_model: Path
) -> None:
    coord, _ = pool(nodes=1, concurrency=1, engine="transformers", model=str(tiny_model))
    client = openai.OpenAI(base_url=f"{coord.url}/v1", api_key=coord.admin_key, max_retries=0)
    wait_online(coord, 1, timeout=90)
    wait_until(lambda: [m.id for m in client.models.list()] == ["tiny-llama"], 60, what="the model listed")
    long = [{"role": "user", "content": words(2000)}]
    for stream in (False, True):
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as info:
            reply = client.chat.completions.create(
                model="tiny-llama", messages=long, max_tokens=4, stream=stream
            )
            list(reply) if stream else None  # type: ignore[call-overload]
        assert time.monotonic() - started < 10
        assert info.value.status_code == 400
        assert "512 tokens" in info.value.message and info.value.param == "messages", info.value.message
    # nothing was wedged: the next chat is served at once
    done = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
    )
    assert done.usage is not None and done.usage.completion_tokens > 0
