"""A stand-in OpenAI-compatible server: ``python -m phage.node.engines.standin``.

It takes vLLM's command line (``serve MODEL`` or ``--model MODEL``, ``--port``,
``--served-model-name``…) and llama-server's (``-m FILE``, ``--port``, ``-c``,
``--alias``…), so tests and benchmarks launch it through the managed engines'
command override exactly as the node would launch the real server. It writes
deterministic text (``token0 token1 …``, or the words of ``PHAGE_STANDIN_REPLY``)
and notices a client that hangs up, which it counts at ``GET /stats``.

Environment knobs (all optional):

``PHAGE_STANDIN_TOKEN_DELAY_MS``    pause before each token (default 0: the whole stream in one write)
``PHAGE_STANDIN_STARTUP_DELAY_MS``  pause before listening (a model that takes time to load)
``PHAGE_STANDIN_CRASH_AFTER``       exit abruptly (code 3) once this many completions are served
``PHAGE_STANDIN_REPLY``             the reply's text, one token per word (cut by ``max_tokens``)
With ``tools`` in a chat request (and ``tool_choice`` not ``none``) it answers with one call of
the named (else the first) tool, its arguments ``{"query": <the last user message>}``.

``PHAGE_STANDIN_TOKEN_PAD``         characters of padding on each generated token (a fast, bulky stream)
``PHAGE_STANDIN_FAIL_MODEL``        exit at once (code 1) when asked to serve this model (a bad download)

It is a bare ASGI app on uvicorn (uvloop and httptools where installed): the
coordinator's benchmarks use it as the engine, so per-request overhead matters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class _Disconnected(Exception):
    """The client went away."""


def _env_float(name: str) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else 0.0


def _words(value: Any) -> int:
    """A rough token count: whitespace-separated words (at least 1)."""
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("content") or "")
    return max(1, len(str(value).split()))


def _stop_cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` cut at the earliest stop string, and whether one occurs."""
    hits = [text.index(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string."""
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:k]):
                held = k
                break
    return held


class Reply:
    """The deterministic completion: yields text deltas token by token, honouring stop strings."""

    def __init__(self, max_tokens: int, stop: list[str], words: list[str], pad: int = 0) -> None:
        self.max_tokens = max_tokens
        self.pad = "x" * pad
        self.stop = stop
        self.words = words
        self.tokens = 0
        self.finish_reason = "length"

    def token(self, i: int) -> str | None:
        """The i-th token's text (with its leading space), or None past the reply's end."""
        if self.words:
            return None if i >= len(self.words) else (" " if i else "") + self.words[i]
        return (f" token{i}" if i else "token0") + self.pad

    def deltas(self) -> Iterator[str]:
        """Text as it may be shown: never a piece that might turn out to begin a stop string."""
        text, sent = "", 0
        for i in range(self.max_tokens):
            piece = self.token(i)
            if piece is None:
                self.finish_reason = "stop"
                break
            self.tokens += 1
            text += piece
            cut, hit = _stop_cut(text, self.stop)
            if hit:
                self.finish_reason = "stop"
                if len(cut) > sent:
                    yield cut[sent:]
                return
            safe = len(text) - _held_back(text, self.stop) if self.stop else len(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]


class Standin:
    """The ASGI app: OpenAI's completion endpoints, ``/health``, ``/v1/models`` and ``/stats``."""

    def __init__(self, model: str, *, max_model_len: int = 4096) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.token_delay_s = _env_float("PHAGE_STANDIN_TOKEN_DELAY_MS") / 1000
        crash = os.environ.get("PHAGE_STANDIN_CRASH_AFTER", "").strip()
        self.crash_after = int(crash) if crash else None
        self.words = os.environ.get("PHAGE_STANDIN_REPLY", "").split()
        self.pad = int(_env_float("PHAGE_STANDIN_TOKEN_PAD"))
        self.stats = {"requests": 0, "started": 0, "finished": 0, "cancelled": 0, "tokens": 0}
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health":
            await self._json(send, 200, {"status": "ok"})
        elif path == "/v1/models":
            await self._json(send, 200, self._models())
        elif path == "/stats":
            await self._json(send, 200, self.stats)
        elif path in ("/v1/chat/completions", "/v1/completions") and method == "POST":
            await self._complete(receive, send, chat=path == "/v1/chat/completions")
        else:
            await self._json(send, 404, {"error": {"message": f"no route {method} {path}", "code": 404}})

    def _models(self) -> dict[str, Any]:
        entry = {"id": self.model, "object": "model", "created": self.created, "owned_by": "phage-standin"}
        return {"object": "list", "data": [{**entry, "max_model_len": self.max_model_len}]}

    @staticmethod
    async def _json(send: Send, status: int, body: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    @staticmethod
    async def _body(receive: Receive) -> bytes:
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _complete(self, receive: Receive, send: Send, *, chat: bool) -> None:
        try:
            req = json.loads(await self._body(receive))
        except _Disconnected:
            return
        except ValueError:
            await self._json(send, 400, {"error": {"message": "the body is not JSON", "code": 400}})
            return
        if req.get("model") not in (None, "", self.model):
            message = f"The model `{req['model']}` does not exist."
            await self._json(send, 404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
            return
        self.stats["requests"] += 1
        stop = req.get("stop") or []
        reply = Reply(
            int(req.get("max_tokens") or req.get("max_completion_tokens") or 16),
            [stop] if isinstance(stop, str) else list(stop),
            self.words,
            self.pad,
        )
        prompt_tokens = _words(req.get("messages") if chat else req.get("prompt", ""))
        if prompt_tokens >= self.max_model_len:  # refused before any work, in vLLM's words
            message = (
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the length of the input."
            )
            await self._json(
                send, 400, {"error": {"message": message, "type": "BadRequestError", "code": 400}}
            )
            return
        call = _tool_call(req) if chat else None
        try:
            if call is not None:
                await self._tool_answer(send, req, call, prompt_tokens)
            elif req.get("stream"):
                include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
                await self._stream(receive, send, reply, chat, prompt_tokens, include_usage)
            else:
                text = "".join(reply.deltas())
                self.stats["tokens"] += reply.tokens
                choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish_reason}
                choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                await self._json(
                    send, 200, self._envelope(chat, False, [choice], prompt_tokens, reply.tokens)
                )
        finally:
            if self.crash_after is not None and self.stats["requests"] >= self.crash_after:
                # Let the transport flush what was written, then die as a crashing server does.
                asyncio.get_running_loop().call_later(0.05, os._exit, 3)

    async def _tool_answer(self, send: Send, req: dict[str, Any], call: dict[str, Any], prompt: int) -> None:
        """Answer with a call of the tool asked for (streamed in two fragments, as vLLM does)."""
        self.stats["tokens"] += 1
        if not req.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            await self._json(send, 200, self._envelope(True, False, [choice], prompt, 1))
            return
        name_part = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
        args_part = {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
        events = [
            self._envelope(
                True, True, [{"index": 0, "delta": {"role": "assistant", "tool_calls": [name_part]}}], 0, None
            ),
            self._envelope(True, True, [{"index": 0, "delta": {"tool_calls": [args_part]}}], 0, None),
            self._envelope(True, True, [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], 0, None),
        ]
        if (req.get("stream_options") or {}).get("include_usage"):
            events.append(self._envelope(True, True, [], prompt, 1))
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        await send({"type": "http.response.body", "body": body})
        self.stats["finished"] += 1

    def _envelope(
        self, chat: bool, chunk: bool, choices: list[dict[str, Any]], prompt: int, completion: int | None
    ) -> dict[str, Any]:
        kind = "chat.completion" if chat else "text_completion"
        body: dict[str, Any] = {
            "id": "cmpl-standin",
            "object": kind + (".chunk" if chunk and chat else ""),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if completion is not None:
            body["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return body

    async def _stream(
        self, receive: Receive, send: Send, reply: Reply, chat: bool, prompt: int, include_usage: bool
    ) -> None:
        """Send SSE chunks; a client that hangs up stops the generation at the next token."""
        self.stats["started"] += 1
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        # Every content chunk is the same JSON but for the text: build it around a hole once.
        head, _, tail = json.dumps(
            self._envelope(chat, True, [self._choice(chat, "\0", None)], 0, None)
        ).partition('"\\u0000"')
        pending: list[bytes] = []
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            if chat:
                first = self._envelope(chat, True, [self._choice(chat, "", None, role=True)], 0, None)
                pending.append(b"data: " + json.dumps(first).encode() + b"\n\n")
            for text in reply.deltas():
                pending.append(f"data: {head}{json.dumps(text)}{tail}\n\n".encode())
                if self.token_delay_s:
                    await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
                    pending.clear()
                    await asyncio.sleep(self.token_delay_s)
                    if gone.is_set():
                        raise _Disconnected
            last = self._envelope(chat, True, [self._choice(chat, "", reply.finish_reason)], 0, None)
            pending.append(b"data: " + json.dumps(last).encode() + b"\n\n")
            if include_usage:
                usage = self._envelope(chat, True, [], prompt, reply.tokens)
                pending.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
            pending.append(b"data: [DONE]\n\n")
            await send({"type": "http.response.body", "body": b"".join(pending)})
            self.stats["finished"] += 1
        except (_Disconnected, OSError):
            self.stats["cancelled"] += 1
        finally:
            self.stats["tokens"] += reply.tokens
            watcher.cancel()

    @staticmethod
    def _choice(chat: bool, text: str, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish}


def _tool_call(req: dict[str, Any]) -> dict[str, Any] | None:
    """The tool call a request with ``tools`` gets: the tool ``tool_choice`` names, else the first.

    Its arguments echo the last user message, so a test can see what went in came back.
    """
    tools = [t for t in req.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = req.get("tool_choice")
    if not tools or choice == "none":
        return None
    name = tools[0]["function"].get("name", "")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name", name)
    said = [
        m.get("content") for m in req.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
    ]
    args = json.dumps({"query": said[-1] if said else ""})
    return {"id": "call_standin_0", "type": "function", "function": {"name": name, "arguments": args}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """vLLM's and llama-server's flags that matter here; any others are accepted and ignored."""
    parser = argparse.ArgumentParser(prog="phage-standin", description=__doc__.split("\n")[0])
    parser.add_argument("words", nargs="*", help="`serve MODEL` (vLLM's form)")
    parser.add_argument("--model", "-m", dest="model_flag")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", "--alias", "-a", dest="served_name", nargs="+")
    parser.add_argument("--max-model-len", "-c", "--ctx-size", dest="max_model_len", type=int, default=4096)
    args, _unknown = parser.parse_known_args(argv)
    positional = [w for w in args.words if w != "serve"]
    args.model = args.model_flag or (positional[0] if positional else "standin")
    return args


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, optionally pretend to load a model, then serve until SIGTERM."""
    import uvicorn

    args = parse_args(argv)
    name = args.served_name[0] if args.served_name else args.model
    if args.model == os.environ.get("PHAGE_STANDIN_FAIL_MODEL"):
        print(f"error: failed to load model {args.model!r}", file=sys.stderr, flush=True)
        sys.exit(1)
    delay = _env_float("PHAGE_STANDIN_STARTUP_DELAY_MS") / 1000
    if delay:
        time.sleep(delay)
    print(f"phage stand-in serving {name!r} on {args.host}:{args.port}", flush=True)
    uvicorn.run(
        Standin(name, max_model_len=args.max_model_len),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
