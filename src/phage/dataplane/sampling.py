"""Picking the next token, and carrying the choice to the node that makes it.

A chain's driver picks every token itself. When the chain decodes on its own (a ring,
:mod:`phage.dataplane.ring`) its last node picks instead and hands the token straight to
its first node, so the same rule must give the same token in both places: the driver
sends the last node its sampling settings and the state of its random generator, and
repeats every pick itself from the logits the last node reports, which checks it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

from phage.errors import InvalidInput
from phage.protocol.v1 import dataplane_pb2 as dp

MAX_TEMPERATURE = 100.0
MIN_TEMPERATURE = 1e-3
"""Below this a temperature picks as 0 does: dividing logits by it overflows to infinities."""
MAX_RNG_STATE = 64 * 1024
"""A generator's state on the wire (torch's CPU generator: about 5 KiB)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is picked: greedy at temperature 0, else seeded sampling."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    top_p: float | None = None
    eos_token_id: int | None = None


def pick(logits: Any, sampling: Sampling, generator: Any) -> int:
    """The next token from one position's logits."""
    import torch

    if sampling.temperature < MIN_TEMPERATURE:  # colder than this, sampling is argmax (and overflows)
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, index = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def new_generator(seed: int | None) -> Any:
    """A CPU generator seeded with ``seed`` (a fresh random seed when None)."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else torch.seed())
    return generator


def put_sampling(frame: dp.Frame, sampling: Sampling, generator: Any | None) -> None:
    """Ask the node ``frame`` goes to to pick the next token, from ``generator``'s state when given."""
    frame.strings["temperature"] = repr(float(sampling.temperature))
    if sampling.top_p is not None:
        frame.strings["top_p"] = repr(float(sampling.top_p))
    if generator is not None and sampling.temperature >= MIN_TEMPERATURE:
        frame.strings["rng"] = base64.b64encode(generator.get_state().numpy().tobytes()).decode()


def _float(frame: dp.Frame, name: str, low: float, high: float) -> float:
    try:
        value = float(frame.strings[name])
    except ValueError:
        raise InvalidInput(f"{name} is not a number", field=name) from None
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInput(f"{name} must be between {low:g} and {high:g}", field=name)
    return value


def take_sampling(frame: dp.Frame, generator: Any | None) -> tuple[Sampling, Any] | None:
    """The sampling a request asks of this node (None: it asks for none), and the generator to use.

    ``generator`` is the one this conversation used last; a request carrying a state replaces it.
    """
    if "temperature" not in frame.strings:
        return None
    temperature = _float(frame, "temperature", 0.0, MAX_TEMPERATURE)
    top_p = _float(frame, "top_p", 0.0, 1.0) if "top_p" in frame.strings else None
    if top_p is not None and top_p <= 0:
        raise InvalidInput("top_p must be above 0", field="top_p")
    state = frame.strings.get("rng", "")
    if state:
        generator = _generator_from(state)
    if temperature >= MIN_TEMPERATURE and generator is None:
        raise InvalidInput("sampling at a temperature above 0 needs the generator's state", field="rng")
    return Sampling(temperature=temperature, top_p=top_p), generator


def _generator_from(state: str) -> Any:
    import torch

    if len(state) > MAX_RNG_STATE * 4 // 3 + 4:
        raise InvalidInput(f"a generator's state is at most {MAX_RNG_STATE} bytes", field="rng")
    try:
        raw = base64.b64decode(state, validate=True)
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    except (ValueError, RuntimeError) as exc:
        raise InvalidInput(f"not a generator's state: {exc}", field="rng") from None
    return generator
