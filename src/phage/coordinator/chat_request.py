"""Validating an OpenAI ``/v1/chat/completions`` body into what phage sends a node.

OpenAI clients send many optional parameters; phage honours the ones that change
what the engine does (``max_tokens``, ``temperature``, ``top_p``, ``stop``,
``seed``, ``stream``, ``n``), refuses those it cannot honour when they ask for
something (``tools``, ``response_format``, ``logprobs``: a silent plain-text answer
would mislead an agent), accepts the rest of OpenAI's documented names without
acting on them, and refuses anything else naming the field, as OpenAI does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from phage.errors import InvalidInput
from phage.protocol.v1 import phage_pb2 as pb

ROLES = {"system", "user", "assistant", "tool", "developer"}
MAX_MESSAGES = 1024
MAX_STOPS = 4
MAX_N = 8
"""Choices one request may ask for (each is generated, and charged, separately)."""
PASS_THROUGH: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
}
"""Parameters handed to engines that honour them (OpenAI-compatible servers: vLLM, llama.cpp), with
the values that ask for nothing special. A request that asks for something goes only to such nodes,
or is refused with a 400 naming the parameter: silently ignoring a tool list or a JSON schema would
hand an agent a plain-text answer it cannot tell from a real one."""
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
}
"""Parameters no engine path carries yet: refused when they ask for anything."""
MAX_TOOLS = 128
IGNORED = {
    "parallel_tool_calls",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "service_tier",
    "modalities",
    "reasoning_effort",
}
"""OpenAI parameters accepted and not acted on (engines here do not support them)."""
KNOWN = (
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
    }
    | IGNORED
    | set(UNSUPPORTED)
    | set(PASS_THROUGH)
)


@dataclass(frozen=True, slots=True)
class ChatParams:
    """A validated chat request."""

    model: str
    order: pb.ChatOrder
    stream: bool
    include_usage: bool
    max_tokens: int
    kind: str = "chat"
    """``chat`` (/v1/chat/completions) or ``completion`` (/v1/completions: a raw prompt)."""
    n: int = 1
    """Choices to generate (non-streaming only)."""
    fallbacks: tuple[str, ...] = ()
    """Models to try, in order, when no node of ``model`` can take the request (an alias's list)."""


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidInput(f"{name} must be a number", field=name)
    if not lo <= v <= hi:
        raise InvalidInput(f"{name} must be between {lo:g} and {hi:g}; got {v}", field=name)
    return float(v)


def _content(v: Any, where: str) -> str:
    """Message content: a string, or OpenAI's list of ``{"type": "text", "text": …}`` parts."""
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if isinstance(v, list):
        parts = []
        for i, p in enumerate(v):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise InvalidInput(
                    f"{where}.content[{i}] must be a text part ({{'type': 'text', 'text': …}}); "
                    "images and audio are not supported",
                    field=f"{where}.content",
                )
            parts.append(p["text"])
        return "".join(parts)
    raise InvalidInput(f"{where}.content must be a string or a list of text parts", field=f"{where}.content")


def parse_chat(body: Any, *, max_tokens_limit: int, default_max_tokens: int) -> ChatParams:
    """Validate a chat completion body; every error names the field and the limit."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r}", field=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidInput("model is required (a string naming a model the pool serves)", field="model")
    if len(model) > 255:
        raise InvalidInput("model is longer than 255 characters", field="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("messages must be a non-empty list", field="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInput(
            f"messages has {len(messages)} entries; the limit is {MAX_MESSAGES}", field="messages"
        )
    order = pb.ChatOrder()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidInput(f"{where} must be an object with role and content", field=where)
        role = m.get("role")
        if role not in ROLES:
            raise InvalidInput(f"{where}.role must be one of {sorted(ROLES)}", field=f"{where}.role")
        order.messages.add(role=role, content=_content(m.get("content"), where))
    for name, plain in UNSUPPORTED.items():
        if body.get(name) not in plain:
            raise InvalidInput(
                f"{name} is not supported: the engines serving this pool's chats cannot honour it",
                field=name,
            )
    extras = {k: body[k] for k in PASS_THROUGH if body.get(k) not in PASS_THROUGH[k]}
    tools = extras.get("tools")
    if tools is not None and (not isinstance(tools, list) or len(tools) > MAX_TOOLS):
        raise InvalidInput(f"tools must be a list of at most {MAX_TOOLS} tools", field="tools")
    if extras:
        if "parallel_tool_calls" in body:
            extras["parallel_tool_calls"] = body["parallel_tool_calls"]
        order.extras_json = json.dumps(extras, separators=(",", ":"))
    n = body.get("n", 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInput("stream must be true or false", field="stream")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidInput(f"n must be an integer from 1 to {MAX_N}", field="n")
    if n > 1 and stream:
        raise InvalidInput("n > 1 needs stream: false (streamed answers carry one choice)", field="n")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise InvalidInput("stream_options must be an object", field="stream_options")
    include_usage = bool(opts.get("include_usage", False))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = default_max_tokens
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise InvalidInput(f"{field} must be an integer from 1 to {max_tokens_limit}", field=field)
    order.max_tokens = max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    order.temperature = 1.0 if temperature is None else temperature
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        order.has_top_p, order.top_p = True, top_p
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
            raise InvalidInput("stop must be a string or a list of non-empty strings", field="stop")
        if len(stops) > MAX_STOPS:
            raise InvalidInput(f"stop has {len(stops)} strings; the limit is {MAX_STOPS}", field="stop")
        order.stop.extend(stops)
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
            raise InvalidInput("seed must be a 64-bit integer", field="seed")
        order.has_seed, order.seed = True, seed
    return ChatParams(model.strip(), order, stream, include_usage, max_tokens, n=n)


COMPLETION_KNOWN = {
    "model",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "user",
    "echo",
    "logprobs",
    "suffix",
    "best_of",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
}


def parse_completion(body: Any, *, max_tokens_limit: int, default_max_tokens: int) -> ChatParams:
    """Validate a ``/v1/completions`` body: one prompt string, the same sampling settings as chat."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    unknown = sorted(set(body) - COMPLETION_KNOWN)
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r}", field=unknown[0])
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput("prompt must be a non-empty string (one prompt per request)", field="prompt")
    for name, allowed in (("echo", (None, False)), ("suffix", (None, "")), ("best_of", (None, 1))):
        if body.get(name) not in allowed:
            raise InvalidInput(f"{name} is not supported by this pool", field=name)
    if body.get("logprobs") is not None:
        raise InvalidInput("logprobs is not supported by this pool's engines", field="logprobs")
    chat_body = {
        k: v for k, v in body.items() if k not in ("prompt", "echo", "suffix", "best_of", "logprobs")
    }
    chat_body["messages"] = [{"role": "user", "content": prompt}]
    params = parse_chat(chat_body, max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens)
    order = params.order
    del order.messages[:]
    order.prompt = prompt
    return ChatParams(
        params.model, order, params.stream, params.include_usage, params.max_tokens, "completion"
    )
