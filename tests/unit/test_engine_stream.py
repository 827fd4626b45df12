"""The OpenAI-compatible client without processes: SSE parsing, usage, errors, early close, engine choice."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from phage.errors import EngineError, InvalidInput
from phage.node.engines import detect, make_engine
from phage.node.engines.base import ChatMessage, GenerationRequest
from phage.node.engines.llamacpp import LlamaCppEngine
from phage.node.engines.openai_compat import ChunkReader, OpenAIEngine, SSEParser, request_body
from phage.node.engines.standin import Reply, Standin
from phage.node.engines.vllm import VLLMEngine


async def _collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


def _sse(*chunks: Any) -> bytes:
    out = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return "".join(out).encode()


def _chat_chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def test_sse_events_join_data_lines_and_skip_comments() -> None:
    parser = SSEParser()
    raw = b": keep-alive\r\ndata: a\r\ndata:b\r\n\r\nevent: x\n\ndata: tail-without-blank"
    # bytes arrive in arbitrary pieces; events come out whole, in order
    for size in (1, 5, len(raw)):
        parser = SSEParser()
        out = [d for i in range(0, len(raw), size) for d in parser.feed(raw[i : i + size])]
        assert out == [b"a\nb"]
        assert parser.close() == [b"tail-without-blank"]
        assert parser.close() == []


def test_chunk_reader_takes_text_finish_and_usage() -> None:
    reader = ChunkReader(chat=True)
    texts = [
        reader.feed(c) for c in (_chat_chunk("Hel"), _chat_chunk("lo"), _chat_chunk(None, "stop"), USAGE)
    ]
    assert texts == ["Hel", "lo", "", ""]
    final = reader.final()
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("stop", 7, 3)


def test_chunk_reader_counts_deltas_when_the_server_sends_no_usage() -> None:
    reader = ChunkReader(chat=False)
    for chunk in ({"choices": [{"text": "a"}]}, {"choices": [{"text": "b", "finish_reason": "length"}]}):
        reader.feed(chunk)
    final = reader.final()
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("length", 0, 2)


def test_chunk_reader_raises_on_an_error_chunk() -> None:
    with pytest.raises(EngineError, match="out of memory"):
        ChunkReader(chat=True).feed({"error": {"message": "CUDA out of memory"}})


def test_request_body_for_chat_and_prompt() -> None:
    chat = GenerationRequest(messages=(ChatMessage("user", "hi"),), stop=["\n"], seed=3, top_p=0.5)
    body = request_body(chat, "m")
    assert body["messages"] == [{"role": "user", "content": "hi"}] and "prompt" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["stop"], body["seed"], body["top_p"], body["model"]) == (["\n"], 3, 0.5, "m")
    plain = request_body(GenerationRequest(prompt="p", max_tokens=5), "m")
    assert plain["prompt"] == "p" and plain["max_tokens"] == 5 and "stop" not in plain


class _Body(httpx.AsyncByteStream):
    """A response body that records whether the client closed it."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for line in self.payload.splitlines(keepends=True):  # one line per read, as a real stream
            yield line

    async def aclose(self) -> None:
        self.closed = True


def _engine(handler: Any, model: str = "m") -> OpenAIEngine:
    return OpenAIEngine("http://engine.test/v1/", model, transport=httpx.MockTransport(handler))


async def test_stream_yields_deltas_then_usage_and_posts_to_the_right_path() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    body = _sse(_chat_chunk("a"), _chat_chunk("b"), _chat_chunk(None, "stop"), USAGE, "[DONE]")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, stream=_Body(body))

    engine = _engine(handler)
    deltas = await _collect(engine.stream(GenerationRequest(messages=(ChatMessage("user", "x"),))))
    assert [d.text for d in deltas] == ["a", "b", ""]
    assert deltas[-1].final and deltas[-1].completion_tokens == 3 and deltas[-1].prompt_tokens == 7
    assert seen[0][0] == "/v1/chat/completions" and seen[0][1]["model"] == "m"
    gen = await engine.generate(GenerationRequest(prompt="x"))
    assert seen[1][0] == "/v1/completions"
    assert (gen.text, gen.completion_tokens) == ("", 3)  # completions read "text", the mock sends chat
    await engine.close()


async def test_closing_the_stream_early_closes_the_response() -> None:
    streams: list[_Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        streams.append(_Body(_sse(*[_chat_chunk(f"t{i}") for i in range(100)], "[DONE]")))
        return httpx.Response(200, stream=streams[-1])

    engine = _engine(handler)
    it = engine.stream(GenerationRequest(messages=(ChatMessage("user", "x"),)))
    assert (await anext(it)).text == "t0"
    assert not streams[0].closed
    await it.aclose()  # type: ignore[attr-defined]
    assert streams[0].closed


async def test_an_error_status_becomes_engine_error_with_the_servers_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "The model `m` does not exist."}})

    with pytest.raises(EngineError, match="404: The model `m` does not exist"):
        await _engine(handler).generate(GenerationRequest(prompt="x"))


async def test_an_unreachable_server_is_engine_error_and_unhealthy() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    engine = _engine(handler)
    assert not await engine.health()
    with pytest.raises(EngineError, match="failed"):
        await engine.generate(GenerationRequest(prompt="x"))
    with pytest.raises(EngineError, match="cannot reach"):
        await engine.start()


async def test_health_falls_back_to_models_and_start_takes_the_first_model() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "first"}, {"id": "second"}]})
        return httpx.Response(404)

    engine = _engine(handler, model="")
    assert await engine.health()
    await engine.start()
    assert engine.model == "first" and engine.models() == ["first", "second"]
    await engine.load("second")
    assert engine.model == "second"
    with pytest.raises(EngineError, match="does not serve 'third'"):
        await engine.load("third")


async def test_against_the_standin_app_in_process() -> None:
    """The stand-in's ASGI app and the client agree on the protocol (no sockets)."""
    engine = OpenAIEngine("http://standin", "", transport=httpx.ASGITransport(app=Standin("tiny")))
    await engine.start()
    assert engine.model == "tiny"
    chat = GenerationRequest(messages=(ChatMessage("user", "one two three"),), max_tokens=4)
    deltas = await _collect(engine.stream(chat))
    assert "".join(d.text for d in deltas) == "token0 token1 token2 token3"
    assert (deltas[-1].finish_reason, deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (
        "length",
        3,
        4,
    )
    gen = await engine.generate(GenerationRequest(prompt="p", max_tokens=50, stop=[" token5"]))
    assert (gen.text, gen.finish_reason, gen.completion_tokens) == (
        "token0 token1 token2 token3 token4",
        "stop",
        6,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Standin("tiny")), base_url="http://s"
    ) as c:
        plain = (await c.post("/v1/chat/completions", json={"messages": [], "max_tokens": 2})).json()
    assert plain["choices"][0]["message"]["content"] == "token0 token1"
    assert plain["usage"]["completion_tokens"] == 2


def test_standin_reply_holds_back_a_possible_stop_string() -> None:
    reply = Reply(10, ["1 tok"], [])
    assert list(reply.deltas()) == ["token0", " token"]
    assert reply.finish_reason == "stop" and reply.tokens == 3  # the stop string ends in token2
    words = Reply(10, [], ["hello", "world"])
    assert "".join(words.deltas()) == "hello world" and words.finish_reason == "stop"


def test_make_engine_builds_each_kind_with_its_options() -> None:
    vllm = make_engine(
        "vllm", "org/m", model_name="m", port=8123, gpu_memory_utilization=0.5, max_model_len=2048, url=None
    )
    assert isinstance(vllm, VLLMEngine)
    vllm.command = ["vllm"]
    assert vllm.argv(8123) == [
        "vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "8123",
        "--gpu-memory-utilization", "0.5", "--max-model-len", "2048", "--served-model-name", "m",
    ]  # fmt: skip
    module = make_engine("vllm", "org/m", command=f"{sys.executable} -m vllm.entrypoints.openai.api_server")
    assert module.argv(1)[3:5] == ["--model", "org/m"] and "--served-model-name" not in module.argv(1)
    llama = make_engine("llamacpp", "/models/qwen-q4.gguf", command="llama-server", gpu_layers=99)
    assert isinstance(llama, LlamaCppEngine) and llama.model == "qwen-q4"
    assert llama.argv(9) == [
        "llama-server", "-m", "/models/qwen-q4.gguf", "--host", "127.0.0.1", "--port", "9",
        "-c", "4096", "-ngl", "99", "--alias", "qwen-q4",
    ]  # fmt: skip
    openai = make_engine("openai", "llama3", url="http://h:11434/v1", api_key="k")
    assert isinstance(openai, OpenAIEngine) and openai.url == "http://h:11434" and openai.model == "llama3"
    with pytest.raises(InvalidInput, match="--engine-url"):
        make_engine("openai", "x")
    with pytest.raises(InvalidInput, match="unknown engine"):
        make_engine("tensorrt", "x")


def test_the_command_override_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHAGE_VLLM_COMMAND", "python -m phage.node.engines.standin")
    assert make_engine("vllm", "m").argv(5)[:5] == [
        "python",
        "-m",
        "phage.node.engines.standin",
        "serve",
        "m",
    ]


def test_detect_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    on_path: set[str] = set()
    modules: set[str] = set()
    monkeypatch.setattr(detect.shutil, "which", lambda name: f"/usr/bin/{name}" if name in on_path else None)
    monkeypatch.setattr(detect, "_has_module", lambda name: name in modules)
    gpu = {"gpus": [{"index": 0}]}
    with pytest.raises(InvalidInput, match="no inference engine"):
        detect.detect_engine("m", hardware=gpu)
    modules |= {"torch", "transformers"}
    assert detect.detect_engine("m", hardware=gpu) == "transformers"
    modules.add("vllm")
    assert detect.detect_engine("m", hardware=gpu) == "vllm"
    assert detect.detect_engine("m", hardware={"gpus": []}) == "transformers"
    on_path.add("llama-server")
    assert detect.detect_engine("/m/x.GGUF", hardware=gpu) == "llamacpp"
    assert detect.detect_engine("m", hardware=gpu) == "vllm"
