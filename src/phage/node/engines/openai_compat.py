"""An engine that is a client of an OpenAI-compatible HTTP server (Ollama, LM Studio, vLLM, llama.cpp).

The node may talk to a server someone else runs (kind ``openai``), or to one it
runs itself (:mod:`phage.node.engines.managed` builds on this class), so the
HTTP client, the SSE parsing and the usage accounting live here once.

Completions are always streamed with ``stream_options.include_usage``: the last
chunk carries the server's token counts. Closing the iterator closes the HTTP
response, which is how the server learns that the client left and stops
generating.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

try:
    import aiohttp
except ImportError:  # pragma: no cover - a dependency; httpx serves alone without it
    aiohttp = None  # type: ignore[assignment]

from phage.errors import EngineError, InvalidInput, PhageError
from phage.node.engines.base import Delta, Engine, GenerationRequest


class SSEParser:
    """Splits server-sent events out of raw bytes as they arrive; yields each event's ``data``.

    Works on bytes (no text decoding of the whole stream, JSON parses bytes) and
    hands back every complete event of a network read at once, so the caller can
    pass them on as one piece: fewer, larger messages under load.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, raw: bytes) -> list[bytes]:
        """The data payloads of the events completed by ``raw`` (multi-line data joined by newlines)."""
        buf = self._buf + raw
        held = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # maybe half of a CRLF: decide when the next bytes come
                buf, held = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = buf.split(b"\n\n")
        self._buf = rest + held
        return [d for d in map(_event_data, events) if d is not None]

    def close(self) -> list[bytes]:
        """What is left when the stream ends (a server that omits the final blank line)."""
        rest, self._buf = self._buf, b""
        data = _event_data(rest) if rest.strip() else None
        return [data] if data is not None else []


def _event_data(event: bytes) -> bytes | None:
    data = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in event.split(b"\n")
        if line.startswith(b"data:")
    ]
    # Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.
    return b"\n".join(data) if data else None


class ChunkReader:
    """Turns OpenAI streaming chunks into :class:`Delta` objects and keeps the final counts.

    Usage comes in its own chunk (empty ``choices``) after the one with the
    finish reason; servers that send none get the number of content deltas as
    completion tokens, which is exact for servers that send one token per chunk.
    """

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.deltas = 0
        self.tool_calls: dict[int, dict[str, Any]] = {}
        """Tool calls being assembled from their streamed fragments, by index."""

    def feed(self, chunk: dict[str, Any]) -> str:
        """The text of one parsed chunk ("" when it has none); records finish reason and usage."""
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise EngineError(f"the engine server reported an error mid-stream: {message}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        choices = chunk.get("choices") or []
        if not choices:
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        source = (choice.get("delta") or {}) if self.chat else choice
        for frag in source.get("tool_calls") or [] if self.chat else []:
            self._tool_fragment(frag)
        text = source.get("content" if self.chat else "text") or ""
        if text:
            self.deltas += 1
        return str(text)

    def _tool_fragment(self, frag: Any) -> None:
        """Merge one streamed tool-call fragment: id, name and type once, arguments appended."""
        if not isinstance(frag, dict):
            return
        call = self.tool_calls.setdefault(
            int(frag.get("index") or 0),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        call["id"] = frag.get("id") or call["id"]
        call["type"] = frag.get("type") or call["type"]
        fn = frag.get("function") or {}
        call["function"]["name"] = fn.get("name") or call["function"]["name"]
        call["function"]["arguments"] += fn.get("arguments") or ""

    def final(self) -> Delta:
        """The closing delta: finish reason (``stop`` when the server sent none) and token counts."""
        completion = self.completion_tokens if self.completion_tokens is not None else self.deltas
        calls = json.dumps([self.tool_calls[i] for i in sorted(self.tool_calls)]) if self.tool_calls else ""
        return Delta(
            "", self.finish_reason or "stop", self.prompt_tokens or 0, completion, tool_calls_json=calls
        )


PASS_THROUGH = ("tools", "tool_choice", "response_format", "parallel_tool_calls")
"""OpenAI parameters handed to the server as the client sent them."""


def request_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The JSON body of a streamed ``/v1/chat/completions`` or ``/v1/completions`` call."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.is_chat:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
    else:
        body["prompt"] = request.prompt
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.extras_json and request.is_chat:
        extras = json.loads(request.extras_json)
        if isinstance(extras, dict):
            body.update({k: v for k, v in extras.items() if k in PASS_THROUGH})
    return body


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-style error body, or the body itself (cut short)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace")
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(parsed.get("message") or error)
    return str(parsed)


class OpenAIEngine(Engine):
    """A client of an OpenAI-compatible server at ``url``, serving ``model`` (or the first it lists)."""

    name = "openai"
    health_path = "/health"
    """Probed first by :meth:`health`; servers without it fall back to ``/v1/models``."""
    trust_env = True
    """Honour proxy settings from the environment (off for servers on loopback that we run)."""

    def __init__(
        self,
        url: str,
        model: str = "",
        *,
        name: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.model_id = model
        """The id sent in requests; "" takes the first model the server lists."""
        self._name = name
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._models: list[str] = []

    @property
    def url(self) -> str:
        """Base URL of the server, without the ``/v1`` suffix."""
        return self._url

    @url.setter
    def url(self, value: str) -> None:
        value = value.rstrip("/")
        self._url = value.removesuffix("/v1")

    @property
    def model(self) -> str:
        """The name tasks use: ``name`` if given, else the model id."""
        return self._name or self.served_model

    @property
    def served_model(self) -> str:
        """The model id requests carry."""
        return self.model_id or (self._models[0] if self._models else "")

    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (made on first use; pooled connections to the server)."""
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                transport=self._transport,
                trust_env=self.trust_env,
            )
        return self._client

    async def start(self) -> None:
        """Check the server answers and learn its models."""
        await self.refresh_models()
        if not self.served_model:
            raise EngineError(f"the server at {self.url} lists no models; pass --model")

    async def refresh_models(self) -> list[str]:
        """Ask the server for its models (``GET /v1/models``) and cache the list."""
        try:
            response = await self.http().get("/v1/models")
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach the engine server at {self.url}: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineError(
                f"GET {self.url}/v1/models answered {response.status_code}: {_error_text(response.content)}"
            )
        data = response.json().get("data") or []
        self._models = [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        return list(self._models)

    def models(self) -> list[str]:
        """Models the server listed at the last refresh (the configured one first)."""
        names = list(self._models)
        if self.model and self.model not in names:
            names.insert(0, self.model)
        return names

    @property
    def can_load(self) -> bool:
        """A server someone else runs serves what it lists (``models()``); the node cannot load more."""
        return False

    async def load(self, model: str) -> None:
        """Serve ``model`` from now on, once the server lists it."""
        if model == self.model:
            return
        listed = await self.refresh_models()
        if model not in listed:
            raise EngineError(f"the server at {self.url} does not serve {model!r} (it lists {listed})")
        self.model_id, self._name = model, None

    async def health(self) -> bool:
        """True when ``/health`` (or, where that does not exist, ``/v1/models``) answers 200."""
        try:
            response = await self.http().get(self.health_path, timeout=5.0)
            if response.status_code == 404 and self.health_path != "/v1/models":
                response = await self.http().get("/v1/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def before_request(self) -> None:
        """Hook run before each completion (the managed engines wait for their server here)."""
        if not self.served_model:
            await self.start()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream a completion over SSE; leaving early closes the response, which stops the server."""
        await self.before_request()
        path = "/v1/chat/completions" if request.is_chat else "/v1/completions"
        reader = ChunkReader(chat=request.is_chat)
        parser = SSEParser()
        done = False
        async with contextlib.aclosing(
            self._post_stream(path, request_body(request, self.served_model))
        ) as body:
            async for raw in body:
                # Read on to the body's end, past [DONE]: a response closed early
                # costs its connection, and the next request a new one.
                if done:
                    continue
                text, done = _texts(reader, parser.feed(raw))
                if text:
                    yield Delta(text)
        if not done:
            text, done = _texts(reader, parser.close())
            if text:
                yield Delta(text)
        yield reader.final()

    async def _post_stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """POST ``body`` and yield the response's bytes as they arrive; a non-200 is an EngineError.

        Streams go through aiohttp (about half httpx's cost per request and per read,
        which is most of what a chat token costs a node); an engine built with an
        httpx transport (an in-process ASGI app, a mock) keeps using httpx.
        """
        if self._transport is None and aiohttp is not None:
            try:
                async with self._aiohttp().post(self.url + path, json=body) as resp:
                    if resp.status != 200:
                        raise _refusal(path, resp.status, await resp.read())
                    async for raw in resp.content.iter_any():
                        yield raw
            except aiohttp.ClientError as exc:
                raise EngineError(f"the engine server at {self.url} failed: {exc!r}") from exc
            return
        try:
            async with self.http().stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise _refusal(path, response.status_code, await response.aread())
                async for raw in response.aiter_raw():
                    yield raw
        except httpx.HTTPError as exc:
            raise EngineError(f"the engine server at {self.url} failed: {exc!r}") from exc

    def _aiohttp(self) -> aiohttp.ClientSession:
        """The pooled aiohttp session for completions (made on first use, in the running loop)."""
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=0),
                trust_env=self.trust_env,
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP client (the server keeps running: it is not ours)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def _refusal(path: str, status: int, body: bytes) -> PhageError:
    """A non-200 answer as an error: 400/413 say the request itself is bad (a prompt longer than the
    model's context: vLLM and llama.cpp check before any work), so it is not worth another node."""
    if status in (400, 413):
        return InvalidInput(f"the model's server refused the request: {_error_text(body)}", field="messages")
    return EngineError(f"{path} answered {status}: {_error_text(body)}", field="model")


def _texts(reader: ChunkReader, events: list[bytes]) -> tuple[str, bool]:
    """The text of a batch of events, and whether ``[DONE]`` was among them."""
    texts: list[str] = []
    for data in events:
        if data.strip() == b"[DONE]":
            return "".join(texts), True
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise EngineError(f"the engine server sent a malformed chunk: {data[:200]!r}") from exc
        text = reader.feed(chunk)
        if text:
            texts.append(text)
    return "".join(texts), False
